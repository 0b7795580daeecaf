//! Writing one namespace's desired objects: get + create/replace with the resourceVersion
//! (409: re-read and retry), never server-side apply; deleting what we own and no longer want.
//! A name held by an object without our label is left alone and reported as [`Taken`].
//!
//! Must not: modify or delete an object without Isthmus's managed-by label.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Debug;

use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, DeleteParams, PostParams};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::desired::Desired;
use super::merge;
use super::naming::is_ours;
use crate::kubernetes::mcs::{self, ServiceImport};

/// Attempts of one replace that keeps meeting 409 Conflict before giving up for this round.
const CONFLICT_RETRIES: usize = 5;

/// A name we need, held by someone else's object.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Taken {
    pub kind: &'static str,
    pub namespace: String,
    pub name: String,
    pub uid: Option<String>,
    pub resource_version: Option<String>,
}

/// What a namespace's round produced besides errors.
#[derive(Debug, Default)]
pub struct Written {
    /// ClusterIPs of the derived Services, by name.
    pub cluster_ips: BTreeMap<String, std::net::IpAddr>,
    pub taken: Vec<Taken>,
}

/// One object's outcome.
enum Outcome<K> {
    Ours(K),
    Taken(K),
}

trait Kind:
    kube::Resource<DynamicType = (), Scope = NamespaceResourceScope>
    + Clone
    + Debug
    + Serialize
    + DeserializeOwned
{
    const KIND: &'static str;
}
impl Kind for ServiceImport {
    const KIND: &'static str = "ServiceImport";
}
impl Kind for Service {
    const KIND: &'static str = "Service";
}
impl Kind for EndpointSlice {
    const KIND: &'static str = "EndpointSlice";
}

fn taken<K: Kind>(obj: &K) -> Taken {
    let m = obj.meta();
    Taken {
        kind: K::KIND,
        namespace: m.namespace.clone().unwrap_or_default(),
        name: m.name.clone().unwrap_or_default(),
        uid: m.uid.clone(),
        resource_version: m.resource_version.clone(),
    }
}

/// Creates `desired`, or brings our existing object (`known`, from the list) up to date.
async fn ensure<K: Kind>(
    api: &Api<K>,
    desired: &K,
    known: Option<&K>,
    update: impl Fn(&K, &K) -> Option<K>,
) -> Result<Outcome<K>, kube::Error> {
    let name = desired.meta().name.clone().unwrap_or_default();
    let mut current: Option<K> = known.cloned();
    for _ in 0..CONFLICT_RETRIES {
        let existing = match current.take() {
            Some(e) => e,
            None => match api.create(&PostParams::default(), desired).await {
                Ok(created) => return Ok(Outcome::Ours(created)),
                Err(kube::Error::Api(s)) if s.is_already_exists() || s.is_conflict() => {
                    match api.get_opt(&name).await? {
                        Some(e) => e,
                        None => continue,
                    }
                }
                Err(e) => return Err(e),
            },
        };
        if !is_ours(existing.meta()) {
            return Ok(Outcome::Taken(existing));
        }
        let Some(updated) = update(&existing, desired) else {
            return Ok(Outcome::Ours(existing));
        };
        match api.replace(&name, &PostParams::default(), &updated).await {
            Ok(done) => return Ok(Outcome::Ours(done)),
            Err(kube::Error::Api(s)) if s.is_conflict() => {
                current = api.get_opt(&name).await?;
            }
            Err(kube::Error::Api(s)) if s.is_not_found() => current = None,
            Err(e) => return Err(e),
        }
    }
    Err(kube::Error::Api(Box::new(
        kube::core::Status::failure(
            &format!(
                "{} {name}: still conflicting after {CONFLICT_RETRIES} attempts",
                K::KIND
            ),
            "Conflict",
        )
        .with_code(409),
    )))
}

/// What we own in one namespace (listed by our label).
#[derive(Default)]
pub struct Owned {
    pub imports: BTreeMap<String, ServiceImport>,
    pub services: BTreeMap<String, Service>,
    pub slices: BTreeMap<String, EndpointSlice>,
}

/// Writes `desired` into its namespace; `owned` is what we own there now.
pub async fn write(
    client: &kube::Client,
    desired: &Desired,
    owned: &Owned,
    out: &mut Written,
) -> Result<(), kube::Error> {
    let ns = desired.namespace.as_str();
    let imports: Api<ServiceImport> = Api::namespaced(client.clone(), ns);
    let services: Api<Service> = Api::namespaced(client.clone(), ns);
    let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), ns);
    let si_name = desired.import.metadata.name.clone().unwrap_or_default();

    // The derived Services first: the ServiceImport's ips need the ClusterIP. Their owner is
    // the ServiceImport, so it is created (without ips) before them when new.
    let mut import = desired.import.clone();
    let owner = match ensure(
        &imports,
        &import,
        owned.imports.get(&si_name),
        merge::update_import,
    )
    .await?
    {
        Outcome::Ours(si) => si,
        Outcome::Taken(si) => {
            out.taken.push(taken(&si));
            return Ok(());
        }
    };
    let Some(si_ref) = merge::owner_ref(mcs::API_VERSION, "ServiceImport", &owner.metadata) else {
        return Ok(());
    };
    for derived in &desired.services {
        let mut svc = derived.service.clone();
        svc.metadata.owner_references = Some(vec![si_ref.clone()]);
        let name = svc.metadata.name.clone().unwrap_or_default();
        let svc = match ensure(
            &services,
            &svc,
            owned.services.get(&name),
            merge::update_service,
        )
        .await?
        {
            Outcome::Ours(s) => s,
            Outcome::Taken(s) => {
                out.taken.push(taken(&s));
                continue;
            }
        };
        if let Some(ip) = svc
            .spec
            .as_ref()
            .and_then(|s| s.cluster_ip.as_deref())
            .and_then(|ip| ip.parse().ok())
        {
            out.cluster_ips.insert(name.clone(), ip);
        }
        let Some(svc_ref) = merge::owner_ref("v1", "Service", &svc.metadata) else {
            continue;
        };
        for slice in &derived.slices {
            let mut slice = slice.clone();
            slice.metadata.owner_references = Some(vec![svc_ref.clone()]);
            let sname = slice.metadata.name.clone().unwrap_or_default();
            if let Outcome::Taken(s) = ensure(
                &slices,
                &slice,
                owned.slices.get(&sname),
                merge::update_slice,
            )
            .await?
            {
                out.taken.push(taken(&s));
            }
        }
    }
    // Now the ips (the clusterset Service's ClusterIP) and the status.
    if let Some(ip) = desired
        .services
        .first()
        .and_then(|d| d.service.metadata.name.as_ref())
        .and_then(|n| out.cluster_ips.get(n))
    {
        import.spec.ips = vec![ip.to_string()];
    }
    let owner = match merge::update_import(&owner, &import) {
        Some(u) => {
            imports
                .replace(&si_name, &PostParams::default(), &u)
                .await?
        }
        None => owner,
    };
    if let Some(u) = merge::update_import_status(&owner, &import) {
        imports
            .replace_status(&si_name, &PostParams::default(), &u)
            .await?;
    }
    Ok(())
}

/// Deletes what we own in a namespace and no longer want: slices, Services, ServiceImports not
/// named in `keep`. Each is checked for our label again (a list can be older than the object).
pub async fn delete_unwanted(
    client: &kube::Client,
    ns: &str,
    owned: &Owned,
    keep: &BTreeSet<String>,
) -> Result<usize, kube::Error> {
    let mut n = 0;
    n += delete::<EndpointSlice>(client, ns, &owned.slices, keep).await?;
    n += delete::<Service>(client, ns, &owned.services, keep).await?;
    n += delete::<ServiceImport>(client, ns, &owned.imports, keep).await?;
    Ok(n)
}

async fn delete<K: Kind>(
    client: &kube::Client,
    ns: &str,
    owned: &BTreeMap<String, K>,
    keep: &BTreeSet<String>,
) -> Result<usize, kube::Error> {
    let api: Api<K> = Api::namespaced(client.clone(), ns);
    let mut n = 0;
    for (name, obj) in owned {
        if keep.contains(&format!("{}/{name}", K::KIND)) || !is_ours(obj.meta()) {
            continue;
        }
        // Preconditioned on the uid we listed: a newer object of the same name is not ours to
        // delete on the strength of an old list.
        let dp = DeleteParams {
            preconditions: obj.meta().uid.clone().map(|uid| kube::api::Preconditions {
                uid: Some(uid),
                resource_version: None,
            }),
            ..Default::default()
        };
        match api.delete(name, &dp).await {
            Ok(_) => n += 1,
            Err(kube::Error::Api(s)) if s.is_not_found() || s.is_conflict() => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// The `KIND/name` keys of every object `desired` names in its namespace.
pub fn wanted_names(desired: &[&Desired]) -> BTreeSet<String> {
    let mut keep = BTreeSet::new();
    for d in desired {
        if let Some(n) = &d.import.metadata.name {
            keep.insert(format!("ServiceImport/{n}"));
        }
        for s in &d.services {
            if let Some(n) = &s.service.metadata.name {
                keep.insert(format!("Service/{n}"));
            }
            for sl in &s.slices {
                if let Some(n) = &sl.metadata.name {
                    keep.insert(format!("EndpointSlice/{n}"));
                }
            }
        }
    }
    keep
}
