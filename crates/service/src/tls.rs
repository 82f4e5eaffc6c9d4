//! One TLS crypto provider (ring) for every client in the process: reqwest and tonic are
//! built without a default provider, so it is installed once, before the first client.

/// Installs ring as the process-wide rustls provider; later calls are no-ops.
pub fn install_crypto_provider() {
    // Err means a provider is already installed, which is what we want.
    let _ = rustls::crypto::ring::default_provider().install_default();
}
