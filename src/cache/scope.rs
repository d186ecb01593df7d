//! Where the operator looks: the whole cluster, or a list of namespaces.

use k8s_openapi::NamespaceResourceScope;
use kube::{Api, Client, Resource};

/// The namespaces every watch and every read covers.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Scope {
    /// Every namespace: one cluster-wide watch per kind.
    #[default]
    Cluster,
    /// Only these: one watch per kind and namespace, and no cluster-wide call.
    Namespaces(Vec<String>),
}

impl Scope {
    /// The scope of `namespaces`, duplicates and blanks dropped; none: the cluster.
    pub fn of(namespaces: impl IntoIterator<Item = impl AsRef<str>>) -> Self {
        let mut listed: Vec<String> = Vec::new();
        for namespace in namespaces {
            let namespace = namespace.as_ref().trim();
            if !namespace.is_empty() && !listed.iter().any(|n| n == namespace) {
                listed.push(namespace.to_string());
            }
        }
        if listed.is_empty() { Self::Cluster } else { Self::Namespaces(listed) }
    }

    /// The `Api`s that together cover the scope: one to watch each.
    pub fn apis<K>(&self, client: &Client) -> Vec<Api<K>>
    where
        K: Resource<DynamicType = (), Scope = NamespaceResourceScope>,
    {
        match self {
            Self::Cluster => vec![Api::all(client.clone())],
            Self::Namespaces(namespaces) => {
                namespaces.iter().map(|namespace| Api::namespaced(client.clone(), namespace)).collect()
            }
        }
    }

    /// Whether `namespace` is watched.
    pub fn contains(&self, namespace: &str) -> bool {
        match self {
            Self::Cluster => true,
            Self::Namespaces(namespaces) => namespaces.iter().any(|n| n == namespace),
        }
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::Secret;

    use super::*;

    fn client() -> Client {
        let config = kube::Config::new("http://127.0.0.1:1".parse().unwrap_or_else(|e| panic!("a URL: {e}")));
        Client::try_from(config).unwrap_or_else(|e| panic!("a client: {e}"))
    }

    #[tokio::test]
    async fn with_namespaces_no_cluster_wide_api_is_built() {
        let scope = Scope::of(["a", " b ", "", "a"]);
        assert_eq!(scope, Scope::Namespaces(vec!["a".into(), "b".into()]));
        let apis = scope.apis::<Secret>(&client());
        let paths: Vec<String> = apis.iter().map(|api| api.resource_url().to_string()).collect();
        assert_eq!(paths, ["/api/v1/namespaces/a/secrets", "/api/v1/namespaces/b/secrets"]);
        assert!(scope.contains("a") && !scope.contains("c"));
    }

    #[tokio::test]
    async fn without_namespaces_one_cluster_wide_api() {
        let scope = Scope::of(Vec::<String>::new());
        assert_eq!(scope, Scope::Cluster);
        let paths: Vec<String> =
            scope.apis::<Secret>(&client()).iter().map(|api| api.resource_url().to_string()).collect();
        assert_eq!(paths, ["/api/v1/secrets"]);
        assert!(scope.contains("c"));
    }

    /// Every `Api` the operator builds is namespaced or comes from
    /// [`Scope::apis`]: a cluster-wide one elsewhere would bypass
    /// `--watch-namespace`. The CRD installer (tests and the demo) is the exception.
    #[test]
    fn no_cluster_wide_api_is_built_outside_the_scope() {
        fn sources(dir: &std::path::Path, found: &mut Vec<std::path::PathBuf>) {
            for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
                let path = entry.path();
                if path.is_dir() {
                    sources(&path, found);
                } else if path.extension().is_some_and(|e| e == "rs") {
                    found.push(path);
                }
            }
        }
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let mut found = Vec::new();
        sources(&root, &mut found);
        assert!(found.len() > 20, "the sources were found: {found:?}");
        let exempt = [root.join("cache/scope.rs"), root.join("install.rs")];
        let cluster_wide: Vec<_> = found
            .iter()
            .filter(|path| !exempt.contains(path))
            .filter(|path| {
                let text = std::fs::read_to_string(path).unwrap_or_default();
                text.contains("::all(") || text.contains("all_with(")
            })
            .collect();
        assert!(cluster_wide.is_empty(), "cluster-wide Apis built in {cluster_wide:?}");
    }
}
