//! The Kubernetes API server stand-in (`isthmus_federation::testing::kubeapi`) driven from the
//! outside: the real `/usr/bin/kubectl` as an operator uses it ([`kubectl`]), and a plain hyper
//! client reading watch streams byte for byte ([`wire`]). Every Kubernetes test builds on this
//! stand-in, so these pin the behaviour they rely on.

mod kubectl;
mod kubectl_writes;
mod wire;
