//! Model names: a folder, or a Hugging Face hub id (`BAAI/bge-small-en-v1.5`, optionally
//! `@REVISION`) resolved through the local Hugging Face cache, in the layout that
//! `huggingface_hub` and the `hf-hub` crate share:
//!
//! ```text
//! $HF_HUB_CACHE (or $HF_HOME/hub, or ~/.cache/huggingface/hub)
//!   models--ORG--NAME/refs/main            the commit hash of the `main` revision
//!   models--ORG--NAME/snapshots/HASH/...   the files of that commit
//! ```
//!
//! Only when the model is absent from the cache are its files downloaded, with `hf-hub`
//! (never when `HF_HUB_OFFLINE=1`).

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// Files a model folder needs.
const REQUIRED: &[&str] = &["config.json", "tokenizer.json"];
/// Files fetched when the repository has them.
const OPTIONAL: &[&str] = &[
    "modules.json",
    "sentence_bert_config.json",
    "config_sentence_transformers.json",
    "1_Pooling/config.json",
];

/// The hub cache folder, as `huggingface_hub` finds it.
pub fn cache_dir() -> PathBuf {
    let var = |name| {
        std::env::var_os(name)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    if let Some(dir) = var("HF_HUB_CACHE").or_else(|| var("HUGGINGFACE_HUB_CACHE")) {
        return dir;
    }
    if let Some(home) = var("HF_HOME") {
        return home.join("hub");
    }
    let home = var("HOME").unwrap_or_else(|| PathBuf::from("."));
    home.join(".cache").join("huggingface").join("hub")
}

/// `ORG/NAME` or `ORG/NAME@REV`, split; `None` when `spec` does not look like a hub id.
pub fn parse_id(spec: &str) -> Option<(&str, &str, &str)> {
    let (id, revision) = spec.split_once('@').unwrap_or((spec, "main"));
    let (org, name) = id.split_once('/')?;
    let ok = |s: &str| {
        !s.is_empty()
            && !s.starts_with('.')
            && s.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
    };
    (ok(org) && ok(name) && !revision.is_empty()).then_some((org, name, revision))
}

/// A model folder for `spec`: the folder itself when it exists, else the cached snapshot of
/// the hub id, downloaded first when absent. A spec that is neither is returned as a path, so
/// that loading it names it in its error.
pub fn resolve(spec: &str) -> Result<PathBuf> {
    let path = Path::new(spec);
    if path.exists() {
        return Ok(path.to_path_buf());
    }
    let Some((org, name, revision)) = parse_id(spec) else {
        return Ok(path.to_path_buf());
    };
    let cache = cache_dir();
    if let Some(dir) = cached(&cache, org, name, revision) {
        return Ok(dir);
    }
    let offline = std::env::var("HF_HUB_OFFLINE").is_ok_and(|v| v == "1" || v.eq_ignore_ascii_case("true"));
    let repo = cache.join(format!("models--{org}--{name}"));
    if offline {
        return Err(Error::Option {
            option: "model".into(),
            message: format!(
                "{spec} is neither a folder nor in the Hugging Face cache ({}), and HF_HUB_OFFLINE is set",
                repo.display()
            ),
        });
    }
    download(&cache, &format!("{org}/{name}"), revision).map_err(|message| Error::Option {
        option: "model".into(),
        message: format!(
            "{spec} is neither a folder nor in the Hugging Face cache ({}), and downloading it failed: {message}",
            repo.display()
        ),
    })
}

/// The snapshot folder of a cached model, when it holds a loadable model.
pub fn cached(cache: &Path, org: &str, name: &str, revision: &str) -> Option<PathBuf> {
    let repo = cache.join(format!("models--{org}--{name}"));
    let commit = match std::fs::read_to_string(repo.join("refs").join(revision)) {
        Ok(hash) => hash.trim().to_string(),
        Err(_) => revision.to_string(),
    };
    let dir = repo.join("snapshots").join(commit);
    let complete = REQUIRED.iter().all(|f| dir.join(f).exists())
        && (dir.join("model.safetensors").exists() || dir.join("model.safetensors.index.json").exists());
    complete.then_some(dir)
}

fn download(cache: &Path, id: &str, revision: &str) -> std::result::Result<PathBuf, String> {
    use hf_hub::api::sync::ApiBuilder;
    use hf_hub::{Repo, RepoType};

    let api = ApiBuilder::new()
        .with_cache_dir(cache.to_path_buf())
        .with_progress(false)
        .build()
        .map_err(|e| e.to_string())?;
    let repo = api.repo(Repo::with_revision(
        id.to_string(),
        RepoType::Model,
        revision.to_string(),
    ));
    let mut config = None;
    for file in REQUIRED {
        let path = repo.get(file).map_err(|e| format!("{file}: {e}"))?;
        config.get_or_insert(path);
    }
    match repo.get("model.safetensors") {
        Ok(_) => {}
        Err(_) => {
            let index = repo
                .get("model.safetensors.index.json")
                .map_err(|e| format!("model.safetensors (or its index): {e}"))?;
            let text = std::fs::read_to_string(&index).map_err(|e| e.to_string())?;
            let json: serde_json::Value = serde_json::from_str(&text).map_err(|e| e.to_string())?;
            let mut shards: Vec<&str> = json["weight_map"]
                .as_object()
                .map(|m| m.values().filter_map(|v| v.as_str()).collect())
                .unwrap_or_default();
            shards.sort_unstable();
            shards.dedup();
            for shard in shards {
                repo.get(shard).map_err(|e| format!("{shard}: {e}"))?;
            }
        }
    }
    for file in OPTIONAL {
        let _ = repo.get(file);
    }
    let config = config.expect("REQUIRED is not empty");
    Ok(config
        .parent()
        .expect("a file in a snapshot folder")
        .to_path_buf())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hub_ids_and_paths_are_told_apart() {
        assert_eq!(
            parse_id("BAAI/bge-small-en-v1.5"),
            Some(("BAAI", "bge-small-en-v1.5", "main"))
        );
        assert_eq!(parse_id("org/name@abc123"), Some(("org", "name", "abc123")));
        assert_eq!(parse_id("/abs/path/model"), None);
        assert_eq!(parse_id("./models/x"), None);
        assert_eq!(parse_id("a/b/c"), None);
        assert_eq!(parse_id("plain"), None);
    }
}
