//! `flotilla auth logout`: forget one gateway's stored login (the tokens
//! stay valid at the server until they expire).

use url::Url;

use super::EXIT_OK;
use super::credentials::Store;

pub(super) async fn run(store: &Store, endpoint: &Url) -> anyhow::Result<i32> {
    let key = endpoint.as_str().to_string();
    let path = store.path();
    if !store.load()?.endpoints.contains_key(&key) {
        println!("No stored login for {key}; nothing to do.");
        return Ok(EXIT_OK);
    }
    let forget = key.clone();
    let left = store
        .update_async(move |credentials| {
            credentials.endpoints.remove(&forget);
            if credentials.last_endpoint.as_deref() == Some(forget.as_str()) {
                credentials.last_endpoint = credentials.endpoints.keys().next().cloned();
            }
            credentials.endpoints.len()
        })
        .await?;
    if left == 0 {
        println!(
            "Logged out of {key}: removed {} (no logins left).",
            path.display()
        );
    } else {
        println!(
            "Logged out of {key}: removed its tokens from {}.",
            path.display()
        );
    }
    Ok(EXIT_OK)
}
