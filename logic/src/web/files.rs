//! Static files of the built web client, for `GET` and `HEAD`.
//!
//! - A path that names a file under the root returns that file with a content type from its
//!   extension.
//! - A path whose last segment has no extension (a client route such as `/chat/user/7`, or `/`)
//!   returns `index.html`, so the client's router handles it. Directories are never listed.
//! - A path with a `..` or `.` segment, a backslash or a NUL after percent-decoding, or one that
//!   leaves the root through a symbolic link, returns 404.
//! - Without an index.html under the root, page requests return 404 with a message that tells
//!   how to build the client.

use std::path::{Component, Path, PathBuf};

use axum::body::Body;
use axum::extract::Request;
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::response::Response;
use percent_encoding::percent_decode_str;

/// Body of the 404 returned when the client has not been built.
pub const NOT_BUILT_MESSAGE: &str =
    "web client not built: run `npm ci && npm run build` in web/, then reload\n";
const NOT_FOUND_MESSAGE: &str = "not found\n";
const INDEX: &str = "index.html";

/// The root directory of the built client.
#[derive(Clone, Debug)]
pub struct StaticFiles {
    root: PathBuf,
}

impl StaticFiles {
    /// Serves the files under `root`.
    pub fn new(root: PathBuf) -> StaticFiles {
        StaticFiles { root }
    }

    /// Logs a warning when `root` has no index.html, so a missing build shows at start-up.
    pub fn warn_if_unbuilt(&self) {
        if !self.root.join(INDEX).is_file() {
            tracing::warn!(
                web_root = %self.root.display(),
                "web client not built: {INDEX} is missing; run `npm ci && npm run build` in web/ \
                 (page requests answer 404 until then)"
            );
        }
    }

    /// Returns the file a request path maps to, `None` for a path that is rejected or names no
    /// file. The boolean is true when the file is index.html returned for a client route.
    async fn resolve(&self, raw_path: &str) -> Option<(PathBuf, bool)> {
        let relative = safe_relative_path(raw_path)?;
        let candidate = self.root.join(&relative);
        if let Ok(metadata) = tokio::fs::metadata(&candidate).await {
            if metadata.is_file() {
                return self.inside_root(candidate).await.map(|path| (path, false));
            }
        }
        if has_extension(&relative) {
            return None;
        }
        let index = self.root.join(INDEX);
        self.inside_root(index).await.map(|path| (path, true))
    }

    /// Returns the canonical form of `path` when it is a file inside the canonical root, which
    /// rejects symbolic links that lead out of the root.
    async fn inside_root(&self, path: PathBuf) -> Option<PathBuf> {
        let root = tokio::fs::canonicalize(&self.root).await.ok()?;
        let resolved = tokio::fs::canonicalize(&path).await.ok()?;
        let metadata = tokio::fs::metadata(&resolved).await.ok()?;
        (resolved.starts_with(&root) && metadata.is_file()).then_some(resolved)
    }

    fn is_built(&self) -> bool {
        self.root.join(INDEX).is_file()
    }
}

/// Returns the response to one static file request.
pub async fn respond(files: StaticFiles, request: Request) -> Response {
    let method = request.method().clone();
    if method != Method::GET && method != Method::HEAD {
        return text_response(
            StatusCode::METHOD_NOT_ALLOWED,
            "method not allowed: static files take GET or HEAD\n",
        );
    }
    if !files.is_built() {
        return text_response(StatusCode::NOT_FOUND, NOT_BUILT_MESSAGE);
    }
    let Some((path, is_route)) = files.resolve(request.uri().path()).await else {
        return text_response(StatusCode::NOT_FOUND, NOT_FOUND_MESSAGE);
    };
    let body = match tokio::fs::read(&path).await {
        Ok(body) => body,
        Err(err) => {
            tracing::warn!(path = %path.display(), error = %err, "cannot read a web client file");
            return text_response(StatusCode::NOT_FOUND, NOT_FOUND_MESSAGE);
        }
    };
    file_response(&path, body, is_route, method == Method::HEAD)
}

/// Decodes `raw_path` and returns it relative to the root, or `None` when a segment could leave
/// the root or name something other than a plain file name.
pub fn safe_relative_path(raw_path: &str) -> Option<PathBuf> {
    let decoded = percent_decode_str(raw_path).decode_utf8().ok()?;
    let mut relative = PathBuf::new();
    for segment in decoded.split('/').filter(|segment| !segment.is_empty()) {
        if segment == "." || segment == ".." || segment.contains(['\\', '\0']) {
            return None;
        }
        let mut components = Path::new(segment).components();
        match (components.next(), components.next()) {
            (Some(Component::Normal(name)), None) => relative.push(name),
            _ => return None,
        }
    }
    Some(relative)
}

fn has_extension(relative: &Path) -> bool {
    relative.extension().is_some()
}

/// Returns the content type for a file name's extension.
pub fn content_type(path: &Path) -> &'static str {
    let extension = path
        .extension()
        .and_then(|extension| extension.to_str())
        .map(str::to_ascii_lowercase);
    match extension.as_deref() {
        Some("html") => "text/html; charset=utf-8",
        Some("js" | "mjs") => "text/javascript; charset=utf-8",
        Some("css") => "text/css; charset=utf-8",
        Some("json" | "map") => "application/json",
        Some("svg") => "image/svg+xml",
        Some("png") => "image/png",
        Some("jpg" | "jpeg") => "image/jpeg",
        Some("gif") => "image/gif",
        Some("webp") => "image/webp",
        Some("ico") => "image/x-icon",
        Some("woff") => "font/woff",
        Some("woff2") => "font/woff2",
        Some("txt") => "text/plain; charset=utf-8",
        Some("wasm") => "application/wasm",
        _ => "application/octet-stream",
    }
}

fn file_response(path: &Path, body: Vec<u8>, is_route: bool, head: bool) -> Response {
    // Vite names the files under assets/ by their content hash, so they never change. The page
    // itself is revalidated on every load, so it picks up a new build.
    let cache = if is_route || path.file_name().is_some_and(|name| name == INDEX) {
        "no-cache"
    } else {
        "public, max-age=31536000, immutable"
    };
    let length = body.len();
    let body = if head {
        Body::empty()
    } else {
        Body::from(body)
    };
    let mut response = Response::new(body);
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(content_type(path)),
    );
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(length));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static(cache));
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    response
}

fn text_response(status: StatusCode, message: &'static str) -> Response {
    let mut response = Response::new(Body::from(message));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_path_accepts_plain_segments() {
        let path = safe_relative_path("/assets/index-abc.js").expect("accepted");
        assert_eq!(path, PathBuf::from("assets/index-abc.js"));
        assert_eq!(safe_relative_path("/").expect("root"), PathBuf::new());
        assert_eq!(
            safe_relative_path("//a//b").expect("empty segments skipped"),
            PathBuf::from("a/b")
        );
    }

    #[test]
    fn relative_path_rejects_traversal() {
        for raw in [
            "/../etc/passwd",
            "/assets/../../etc/passwd",
            "/%2e%2e/etc/passwd",
            "/%2E%2E%2Fetc%2Fpasswd",
            "/a/./b",
            "/a%5c..%5cb",
            "/a%00b",
            "/%ff",
        ] {
            assert_eq!(safe_relative_path(raw), None, "{raw}");
        }
    }

    #[test]
    fn content_type_follows_extension() {
        assert_eq!(
            content_type(Path::new("index.html")),
            "text/html; charset=utf-8"
        );
        assert_eq!(
            content_type(Path::new("a/b.JS")),
            "text/javascript; charset=utf-8"
        );
        assert_eq!(content_type(Path::new("x.css")), "text/css; charset=utf-8");
        assert_eq!(content_type(Path::new("x.svg")), "image/svg+xml");
        assert_eq!(
            content_type(Path::new("noextension")),
            "application/octet-stream"
        );
    }
}
