//! Isthmus global DNS: authoritative answers for mesh names (`<svc>.<ns>.svc.clusterset.local`)
//! from the federation's published mesh view. Every hickory type stays inside this crate's
//! adapter module.
