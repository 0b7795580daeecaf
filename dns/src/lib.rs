//! isthmus-dns
