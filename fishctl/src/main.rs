//! The fishctl binary; everything but the crypto provider lives in the library.

fn main() -> std::process::ExitCode {
    // ring is the one rustls provider compiled in; install it before anything touches TLS.
    // An error means one is installed already, which is just as good.
    let _ = rustls::crypto::ring::default_provider().install_default();
    fishctl::main()
}
