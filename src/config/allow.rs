//! Allow entries: content the operator allows besides the baseline, by digest, size or
//! path, scoped to images, repositories, namespaces or containers.

use super::*;

/// An operator allow entry: this content may run in the containers its scopes name (every
/// scope given must match; none given: every container of the node).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AllowEntry {
    /// Image name (a glob: `*` any run of characters, `?` one); `*`: every image.
    #[serde(default = "every")]
    pub image: String,
    /// Image repository, any tag or digest (a glob on the name without `:tag`/`@digest`):
    /// survives an image bump.
    #[serde(default)]
    pub repository: Option<String>,
    /// Kubernetes namespace (a glob).
    #[serde(default)]
    pub namespace: Option<String>,
    /// Container name in its pod (a glob).
    #[serde(default)]
    pub container: Option<String>,
    /// Where the content may run from, as the container sees the path (a glob:
    /// `/tmp/jna*/libjnidispatch.so`): the same bytes anywhere else are not allowed by
    /// this entry. Content allowed only at a path is judged at each exec (its verdict is
    /// not cached, since one file may be reached by two paths).
    #[serde(default)]
    pub path: Option<String>,
    /// BLAKE3 of the content (64 hex digits).
    #[serde(default, deserialize_with = "de_digest")]
    pub blake3: Option<Digest>,
    /// SHA-256 of the content (64 hex digits).
    #[serde(default, deserialize_with = "de_digest")]
    pub sha256: Option<Digest>,
    /// Size of the content in bytes (`driftlock tune` writes it). With every entry of a
    /// container sized, a file whose size is neither in its baseline nor here is denied
    /// without hashing; an entry without a size makes every miss of its containers hashed.
    #[serde(default)]
    pub size: Option<u64>,
    /// Why it is allowed (for people).
    #[serde(default)]
    pub comment: Option<String>,
}

pub(super) fn de_digest<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<Digest>, D::Error> {
    let s = String::deserialize(d)?;
    s.parse::<Digest>()
        .map(Some)
        .map_err(|_| serde::de::Error::custom(format!("{s:?} is not 64 hex digits")))
}

pub(super) fn de_positive<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    let v = u64::deserialize(d)?;
    if v == 0 {
        return Err(serde::de::Error::custom("must be greater than 0"));
    }
    Ok(Some(v))
}

/// Who a container is, for the rules: what its runtime says.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Identity<'a> {
    /// Image name.
    pub image: Option<&'a str>,
    /// Kubernetes namespace.
    pub namespace: Option<&'a str>,
    /// Container name in its pod.
    pub container: Option<&'a str>,
}

impl AllowEntry {
    /// True if every scope the entry gives matches the container.
    pub fn applies_to(&self, who: &Identity<'_>) -> bool {
        let scoped = |pattern: &Option<String>, value: Option<&str>| match pattern {
            None => true,
            Some(p) => value.is_some_and(|v| matches(p, v)),
        };
        (self.image == "*" || who.image.is_some_and(|i| matches(&self.image, i)))
            && scoped(&self.repository, who.image.map(repository_of))
            && scoped(&self.namespace, who.namespace)
            && scoped(&self.container, who.container)
    }

    /// True if the entry names no scope at all: every container of the node.
    pub fn is_node_wide(&self) -> bool {
        self.image == "*"
            && self.repository.is_none()
            && self.namespace.is_none()
            && self.container.is_none()
    }
}

/// Why a namespace pattern can match no Kubernetes namespace (lower-case letters, digits
/// and `-`; the glob's `*` and `?` aside), if it cannot.
pub fn unmatchable_namespace(pattern: &str) -> Option<String> {
    let bad = pattern
        .chars()
        .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '-' | '*' | '?')));
    bad.map(|c| {
        format!("namespace pattern {pattern:?} can match no namespace (a namespace has no {c:?})")
    })
}

impl AllowEntry {
    /// Why some scope of the entry can match nothing, if one cannot: a namespace no
    /// namespace is, a repository with a tag (a repository has none), a path that is not
    /// absolute.
    pub fn unmatchable(&self) -> Option<String> {
        if let Some(ns) = &self.namespace {
            if let Some(why) = unmatchable_namespace(ns) {
                return Some(why);
            }
        }
        if let Some(repo) = &self.repository {
            let last = repo.rsplit('/').next().unwrap_or(repo);
            if last.contains(':') || repo.contains('@') {
                return Some(format!(
                    "repository {repo:?} can match nothing: a repository has no tag or digest (use image = \"{repo}\", or drop the tag)"
                ));
            }
        }
        if let Some(path) = &self.path {
            if !(path.starts_with('/') || path.starts_with('*')) {
                return Some(format!(
                    "path {path:?} can match nothing: paths are absolute, as the container sees them"
                ));
            }
        }
        None
    }
}

/// Content an operator allowed for one container, besides its baseline.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AllowList {
    /// By BLAKE3.
    pub blake3: Vec<Digest>,
    /// By SHA-256 (the hash workers then compute SHA-256 too).
    pub sha256: Vec<Digest>,
    /// Content allowed only at some paths.
    pub at_paths: Vec<PathScoped>,
    /// The sizes the entries give.
    pub sizes: Vec<u64>,
    /// Some entry gives no size: content of any size may be allowed.
    pub unsized_entries: bool,
}

/// Content allowed at the paths a glob matches only.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathScoped {
    /// BLAKE3, if the entry gives it.
    pub blake3: Option<Digest>,
    /// SHA-256, if the entry gives it.
    pub sha256: Option<Digest>,
    /// The path glob, as the container sees the path.
    pub path: String,
}

impl PathScoped {
    /// True if this is the content (by either digest).
    pub fn is_content(&self, blake3: &Digest, sha256: Option<&Digest>) -> bool {
        self.blake3.as_ref() == Some(blake3)
            || (self.sha256.is_some() && self.sha256.as_ref() == sha256)
    }

    /// True if `path` (bytes, as the container sees it) is one the glob matches. A path
    /// that is not UTF-8 matches only a glob written with the same escapes records use.
    pub fn admits_path(&self, path: &[u8]) -> bool {
        match std::str::from_utf8(path) {
            Ok(p) => matches(&self.path, p),
            Err(_) => matches(&self.path, &crate::escape::escape_bytes(path)),
        }
    }
}

impl AllowList {
    /// True if nothing is allowed beyond the baseline.
    pub fn is_empty(&self) -> bool {
        self.blake3.is_empty() && self.sha256.is_empty() && self.at_paths.is_empty()
    }

    /// True if some entry gives a SHA-256 (the hash workers must compute it too).
    pub fn needs_sha256(&self) -> bool {
        !self.sha256.is_empty() || self.at_paths.iter().any(|p| p.sha256.is_some())
    }
}

/// A glob: `*` matches any run of characters (`/` and `:` included), `?` one character,
/// anything else itself. `name*` is a prefix, `*` everything.
pub fn matches(pattern: &str, value: &str) -> bool {
    let (p, v): (Vec<char>, Vec<char>) = (pattern.chars().collect(), value.chars().collect());
    // Iterative, with one backtrack point: linear in practice, no recursion on input.
    let (mut pi, mut vi) = (0, 0);
    let (mut star, mut mark) = (None, 0);
    while vi < v.len() {
        match p.get(pi) {
            Some('*') => {
                star = Some(pi);
                mark = vi;
                pi += 1;
            }
            Some(c) if *c == '?' || *c == v[vi] => {
                pi += 1;
                vi += 1;
            }
            _ => match star {
                Some(sp) => {
                    pi = sp + 1;
                    mark += 1;
                    vi = mark;
                }
                None => return false,
            },
        }
    }
    p[pi..].iter().all(|c| *c == '*')
}

/// An image's repository: its name without `:tag` or `@digest`
/// (`registry:5000/team/app:1.2@sha256:...` → `registry:5000/team/app`).
pub fn repository_of(image: &str) -> &str {
    let name = image.split('@').next().unwrap_or(image);
    let last_slash = name.rfind('/').map_or(0, |i| i + 1);
    match name[last_slash..].rfind(':') {
        Some(i) => &name[..last_slash + i],
        None => name,
    }
}
