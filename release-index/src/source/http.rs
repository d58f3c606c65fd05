use std::io::Read;

use sysext_model::BaseUrl;

use super::{Backend, SourceError};
use crate::http::HttpClient;

/// A release served over HTTP(S) from a base URL.
#[derive(Clone, Debug)]
pub struct HttpBackend {
    base: BaseUrl,
    http: HttpClient,
}

impl HttpBackend {
    /// Reads the release served at `base` through `http`.
    pub fn new(base: BaseUrl, http: HttpClient) -> Self {
        Self { base, http }
    }
}

fn err(location: String, e: crate::http::HttpError) -> SourceError {
    // The HTTP error names the URL already; keep the location for callers that group by path.
    let cause = e.to_string();
    let cause = cause.strip_prefix(&format!("GET {location}: ")).map(str::to_owned).unwrap_or(cause);
    SourceError { location, cause }
}

impl Backend for HttpBackend {
    fn name(&self) -> String {
        self.base.to_string()
    }

    fn location(&self, relative: &str) -> String {
        self.base.join(relative)
    }

    fn open(&self, relative: &str) -> Result<Option<Box<dyn Read + Send>>, SourceError> {
        let url = self.location(relative);
        match self.http.open(&url) {
            Ok(Some(resp)) => Ok(Some(Box::new(resp.body))),
            Ok(None) => Ok(None),
            Err(e) => Err(err(url, e)),
        }
    }

    fn read(&self, relative: &str, limit: u64) -> Result<Option<Vec<u8>>, SourceError> {
        let url = self.location(relative);
        self.http.read(&url, limit).map_err(|e| err(url, e))
    }
}
