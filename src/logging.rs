//! Logging: `ISTHMUS_LOG` is an env-filter (default `info`), `ISTHMUS_LOG_FORMAT=json|plain`.

pub fn init() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("ISTHMUS_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    // hickory logs every query at INFO; h2/tower are noisy at debug.
    let filter = filter
        .add_directive("hickory_server=warn".parse().unwrap_or_default())
        .add_directive("h2=warn".parse().unwrap_or_default());
    let json = std::env::var("ISTHMUS_LOG_FORMAT").is_ok_and(|f| f == "json");
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json {
        builder.json().flatten_event(true).init();
    } else {
        builder.init();
    }
}
