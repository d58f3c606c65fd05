use std::time::Duration;

use clap::Args;
use release_index::http::HttpOptions;

/// How commands that download behave on a slow or broken network.
#[derive(Debug, Clone, Args)]
pub struct NetArgs {
    /// Give up on a server that sends no response or no data for this long, or less than
    /// --low-speed-limit bytes per second over this long (e.g. 30s, 2m).
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
    /// Slowest transfer accepted, in bytes per second averaged over --timeout; 0 disables.
    #[arg(long, value_name = "BYTES", default_value_t = 1024)]
    pub low_speed_limit: u64,
    /// Retries after a connection error, a timeout or an HTTP 408, 429 or 5xx answer.
    #[arg(long, value_name = "N", default_value_t = 4)]
    pub retries: u32,
}

impl NetArgs {
    /// The HTTP client options these arguments describe.
    pub fn http_options(&self) -> HttpOptions {
        HttpOptions {
            connect_timeout: self.timeout.min(HttpOptions::default().connect_timeout),
            timeout: self.timeout,
            low_speed_limit: self.low_speed_limit,
            retries: self.retries,
            ..HttpOptions::default()
        }
    }
}
