//! isthmus-gateway
