//! Checks of what comes back (issuer, signature, errors without secrets)
//! and of `ExchangeTarget::from_spec`.

use super::*;

#[tokio::test]
async fn jwt_from_the_wrong_issuer_is_rejected() {
    let stub = Stub::start().await;
    stub.reply(Reply::Jwt {
        iss: "https://evil.example".into(),
        signer: Signer::Es256,
    });
    let err = exchanger(settings())
        .token(&user("alice", "idt-alice"), &stub.target())
        .await
        .expect_err("wrong issuer");
    assert_eq!(
        err.to_string(),
        format!(
            "exchanged token's issuer https://evil.example is not the expected {}",
            stub.issuer()
        )
    );
}

#[tokio::test]
async fn jwt_signed_with_the_issuers_published_key_is_accepted() {
    let stub = Stub::start().await;
    stub.reply(Reply::Jwt {
        iss: stub.issuer(),
        signer: Signer::Es256,
    });
    let token = exchanger(settings())
        .token(&user("alice", "idt-alice"), &stub.target())
        .await
        .expect("verified");
    assert_eq!(token.expose().split('.').count(), 3);
}

#[tokio::test]
async fn jwt_whose_signature_does_not_verify_is_rejected() {
    let stub = Stub::start().await;
    stub.reply(Reply::Jwt {
        iss: stub.issuer(),
        signer: Signer::Es256Tampered,
    });
    let err = exchanger(settings())
        .token(&user("alice", "idt-alice"), &stub.target())
        .await
        .expect_err("tampered");
    assert!(matches!(err, ExchangeError::Unverified(_)), "{err}");
    assert!(
        err.to_string()
            .starts_with("exchanged token's signature did not verify: "),
        "{err}"
    );
}

#[tokio::test]
async fn a_jwt_is_refused_while_the_issuers_keys_are_unreachable() {
    let stub = Stub::start().await;
    // Nothing listens on port 1: discovery fails to connect.
    let issuer = "http://127.0.0.1:1/dex".to_string();
    for signer in [Signer::Hs256, Signer::None] {
        stub.reply(Reply::Jwt {
            iss: issuer.clone(),
            signer,
        });
        let mut target = stub.target();
        target.expected_issuer = issuer.clone();
        let err = exchanger(settings())
            .token(&user("alice", "idt-alice"), &target)
            .await
            .expect_err("an unverifiable token is not used");
        assert_eq!(err.kind(), "unverified", "{err}");
        let text = err.to_string();
        assert!(
            text.contains("could not fetch the signing keys") && text.contains("reachable")
                || text.contains("alg none"),
            "{text}"
        );
    }
}

#[tokio::test]
async fn http_error_without_an_oauth_body_reports_the_status() {
    let stub = Stub::start().await;
    stub.reply(Reply::Status(502));
    let err = exchanger(settings())
        .token(&user("alice", "idt-alice"), &stub.target())
        .await
        .expect_err("502");
    assert_eq!(
        err.to_string(),
        format!("exchange failed: HTTP 502 from {}", stub.endpoint())
    );
}

#[tokio::test]
async fn user_without_an_id_token_gets_a_clear_error_and_no_request() {
    let stub = Stub::start().await;
    let mut alice = user("alice", "unused");
    alice.id_token = None;
    alice.display_name = Some("Alice".into());
    let err = exchanger(settings())
        .token(&alice, &stub.target())
        .await
        .expect_err("nothing to exchange");
    assert_eq!(
        err.to_string(),
        "no ID token to exchange (Alice authenticated without one)"
    );
    assert_eq!(stub.requests(), 0);
}

#[tokio::test]
async fn error_messages_never_contain_the_subject_token_or_client_secret() {
    let stub = Stub::start().await;
    let exchanger = exchanger(TokenCacheSettings {
        failure_backoff: Duration::ZERO,
        ..settings()
    });
    let alice = user("alice", SUBJECT_SECRET);
    let target = stub.target();
    let echo = format!("bad subject_token {SUBJECT_SECRET} for client secret {CLIENT_SECRET}");
    let replies = [
        Reply::OAuthError {
            status: 400,
            error: "invalid_request",
            description: echo.clone(),
        },
        Reply::OAuthError {
            status: 401,
            error: "invalid_client",
            description: echo,
        },
        Reply::Status(500),
        Reply::Jwt {
            iss: "https://evil.example".into(),
            signer: Signer::Hs256,
        },
        Reply::Jwt {
            iss: stub.issuer(),
            signer: Signer::Es256Tampered,
        },
    ];
    for reply in replies {
        stub.reply(reply);
        let err = exchanger.token(&alice, &target).await.expect_err("fails");
        assert_no_secrets(&renderings(&err));
        let err = exchanger
            .token_after_rejection(&alice, &target, &SecretValue::new("x".into()))
            .await
            .expect_err("fails");
        assert_no_secrets(&renderings(&err));
    }
    // Unreachable, and the backoff error quoting it.
    let mut down = target.clone();
    down.endpoint = "http://127.0.0.1:1/dex/token".into();
    let slow = self::exchanger(settings());
    let err = slow.token(&alice, &down).await.expect_err("down");
    assert_no_secrets(&renderings(&err));
    let err = slow.token(&alice, &down).await.expect_err("backoff");
    assert!(matches!(err, ExchangeError::Backoff { .. }));
    assert_no_secrets(&renderings(&err));
    // The target itself prints redacted.
    assert_no_secrets(&format!("{target:?}"));
}

#[test]
fn from_spec_fills_muster_defaults_and_derives_the_issuer() {
    let spec = TokenExchangeSpec {
        enabled: true,
        dex_token_endpoint: Some("https://dex.cluster-b.example/token".into()),
        ..Default::default()
    };
    let target = ExchangeTarget::from_spec(&spec, Some(&client())).expect("valid");
    assert_eq!(
        target,
        ExchangeTarget {
            endpoint: "https://dex.cluster-b.example/token".into(),
            expected_issuer: "https://dex.cluster-b.example".into(),
            connector_id: None,
            scopes: "openid profile email groups".into(),
            requested_token_type: "urn:ietf:params:oauth:token-type:access_token".into(),
            client: client(),
            server: "".into(),
        }
    );
}

#[test]
fn from_spec_keeps_given_values() {
    let spec = TokenExchangeSpec {
        enabled: true,
        dex_token_endpoint: Some("https://proxy.example/dex-b/token".into()),
        expected_issuer: Some("https://dex.cluster-b.example".into()),
        connector_id: Some("cluster-a-dex".into()),
        scopes: Some("openid groups".into()),
        requested_token_type: Some("urn:ietf:params:oauth:token-type:id_token".into()),
        client_credentials_secret_ref: None,
    };
    let target = ExchangeTarget::from_spec(&spec, Some(&client())).expect("valid");
    assert_eq!(target.expected_issuer, "https://dex.cluster-b.example");
    assert_eq!(target.connector_id.as_deref(), Some("cluster-a-dex"));
    assert_eq!(target.scopes, "openid groups");
    assert_eq!(
        target.requested_token_type,
        "urn:ietf:params:oauth:token-type:id_token"
    );
}

#[test]
fn from_spec_explains_what_is_missing_or_unsafe() {
    let with = |endpoint: Option<&str>| TokenExchangeSpec {
        enabled: true,
        dex_token_endpoint: endpoint.map(str::to_string),
        ..Default::default()
    };
    let cases: [(TokenExchangeSpec, Option<ClientCredentials>, &str); 6] = [
        (with(None), Some(client()), "dexTokenEndpoint is not set"),
        (
            with(Some("  ")),
            Some(client()),
            "dexTokenEndpoint is not set",
        ),
        (
            with(Some("https://dex.b/token")),
            None,
            "no client credentials",
        ),
        (with(Some("not a url")), Some(client()), "is not a URL"),
        (
            with(Some("http://dex.b/token")),
            Some(client()),
            "must use https",
        ),
        (
            with(Some("https://dex.b/token")),
            Some(ClientCredentials {
                client_id: " ".into(),
                client_secret: SecretValue::new("s".into()),
            }),
            "empty client id",
        ),
    ];
    for (spec, creds, want) in cases {
        let err = ExchangeTarget::from_spec(&spec, creds.as_ref()).expect_err(want);
        assert!(err.contains(want), "{err:?} should mention {want:?}");
    }
    for loopback in [
        "http://127.0.0.1:5556/token",
        "http://localhost/dex/token",
        "http://[::1]/token",
    ] {
        assert!(
            ExchangeTarget::from_spec(&with(Some(loopback)), Some(&client())).is_ok(),
            "{loopback}"
        );
    }
}

#[test]
fn issuer_is_the_endpoint_without_a_trailing_token_path() {
    let cases = [
        ("https://dex.b/token", "https://dex.b"),
        ("https://dex.b/dex/token/", "https://dex.b/dex"),
        (
            "https://dex.b/oauth2/exchange",
            "https://dex.b/oauth2/exchange",
        ),
    ];
    for (endpoint, issuer) in cases {
        assert_eq!(issuer_from_endpoint(endpoint), issuer, "{endpoint}");
    }
}

#[test]
fn rejected_error_renders_code_and_optional_description() {
    let with = ExchangeError::Rejected {
        error: "access_denied".into(),
        description: Some("user not in group".into()),
    };
    let without = ExchangeError::Rejected {
        error: "invalid_client".into(),
        description: None,
    };
    assert_eq!(
        with.to_string(),
        "exchange rejected: access_denied: user not in group"
    );
    assert_eq!(without.to_string(), "exchange rejected: invalid_client");
    assert_eq!(with.kind(), "rejected");
}

#[test]
fn status_description_is_one_bounded_line() {
    let err = ExchangeError::Rejected {
        error: "server_error".into(),
        description: Some(format!("line one\nline two {}", "x".repeat(1000))),
    };
    let line = describe_for_status(&err);
    assert!(line.starts_with("exchange rejected: server_error: line one line two x"));
    assert!(!line.contains('\n'));
    assert!(line.chars().count() <= STATUS_MAX_CHARS + 1);
}

#[tokio::test]
async fn dropping_the_exchanger_stops_its_background_refreshes() {
    let stub = Stub::start().await;
    stub.reply(Reply::Opaque {
        expires_in: Some(2),
    });
    let exchanger = exchanger(TokenCacheSettings {
        safety_margin: Duration::ZERO,
        ..settings()
    });
    let (alice, target) = (user("alice", "idt-alice"), stub.target());
    exchanger.token(&alice, &target).await.expect("first");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    stub.delay(Duration::from_millis(300));
    exchanger
        .token(&alice, &target)
        .await
        .expect("hit starts a refresh");
    let inner = Arc::downgrade(&exchanger.inner);
    drop(exchanger);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(
        inner.upgrade().is_none(),
        "refresh task let go of the exchanger"
    );
}
