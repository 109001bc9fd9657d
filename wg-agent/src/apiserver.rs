//! How the agent reaches the apiserver: the in-cluster configuration
//! (the ServiceAccount's token and CA, the `kubernetes` Service that
//! kubelet names in `KUBERNETES_SERVICE_HOST`/`PORT`), or, on clusters
//! without kube-proxy (nothing serves that Service's ClusterIP), the
//! address the original wireguard-cni's users put in the `wg-cni-env`
//! ConfigMap: `KUBERNETES_APISERVER_ENDPOINT=https://HOST:6443`.

use kube::{Client, Config};

/// The variable of the `wg-cni-env` ConfigMap (kube-system) naming the
/// apiserver directly.
pub const ENDPOINT_VAR: &str = "KUBERNETES_APISERVER_ENDPOINT";

/// Why no client could be made.
#[derive(Debug, thiserror::Error)]
pub enum ApiserverError {
    /// `KUBERNETES_APISERVER_ENDPOINT` is not an `https://HOST[:PORT]` URL.
    #[error(
        "{ENDPOINT_VAR}={value:?}: {why} (want https://HOST:PORT, e.g. https://10.0.0.10:6443)"
    )]
    BadEndpoint {
        /// The value.
        value: String,
        /// What is wrong with it.
        why: String,
    },
    /// No configuration (in-cluster or kubeconfig) could be loaded.
    #[error("apiserver configuration: {0}")]
    Config(String),
    /// The client could not be built.
    #[error("apiserver client: {0}")]
    Client(#[from] kube::Error),
}

/// Check an endpoint's shape: `https://`, a host, an optional port, no
/// path, query or credentials (the token comes from the ServiceAccount).
pub fn check_endpoint(value: &str) -> Result<&str, ApiserverError> {
    let bad = |why: &str| ApiserverError::BadEndpoint {
        value: value.to_string(),
        why: why.to_string(),
    };
    let rest = value
        .strip_prefix("https://")
        .ok_or_else(|| bad("not https://"))?;
    let authority = rest.strip_suffix('/').unwrap_or(rest);
    if authority.is_empty() {
        return Err(bad("no host"));
    }
    if authority.contains(['/', '?', '#', '@']) || authority.chars().any(char::is_whitespace) {
        return Err(bad("only a host and a port"));
    }
    Ok(value)
}

/// The agent's client: the inferred configuration (in-cluster, else
/// `KUBECONFIG`), its URL replaced by `endpoint` when one is given (the
/// token, CA and timeouts stay; the apiserver's certificate must name the
/// endpoint's host).
pub async fn client(endpoint: Option<&str>) -> Result<Client, ApiserverError> {
    let mut config = Config::infer()
        .await
        .map_err(|e| ApiserverError::Config(e.to_string()))?;
    if let Some(value) = endpoint.map(str::trim).filter(|v| !v.is_empty()) {
        let value = check_endpoint(value)?;
        config.cluster_url = value.parse().map_err(|e| ApiserverError::BadEndpoint {
            value: value.to_string(),
            why: format!("{e}"),
        })?;
        tracing::info!(
            endpoint = value,
            "reaching the apiserver at {ENDPOINT_VAR} (ConfigMap wg-cni-env)"
        );
    }
    Ok(Client::try_from(config)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints() {
        for ok in [
            "https://10.0.0.10:6443",
            "https://10.0.0.10:6443/",
            "https://api.example.org",
            "https://[fd00::1]:6443",
        ] {
            assert!(check_endpoint(ok).is_ok(), "{ok}");
        }
        for bad in [
            "http://10.0.0.10:6443",
            "10.0.0.10:6443",
            "https://",
            "https://10.0.0.10:6443/api",
            "https://user:pw@10.0.0.10",
            "https://10.0.0.10:6443?x=1",
            "https://10.0.0.1 0",
        ] {
            assert!(check_endpoint(bad).is_err(), "{bad}");
        }
    }
}
