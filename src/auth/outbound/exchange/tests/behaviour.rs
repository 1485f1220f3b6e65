//! The exchange request and the cache's behaviour (single flight, expiry,
//! refresh ahead, rejection, backoff, isolation), against the stub Dex.

use super::*;

#[tokio::test]
async fn exchange_sends_dex_form_parameters_and_form_encoded_basic_auth() {
    let stub = Stub::start().await;
    let exchanger = exchanger(settings());
    let token = exchanger
        .token(&user("alice", "idt-alice"), &stub.target())
        .await
        .expect("exchanged");
    assert_eq!(token.expose(), "xt-1-idt-alice");

    let seen = stub
        .state
        .last
        .lock()
        .expect("lock")
        .take()
        .expect("a request");
    let expected: HashMap<String, String> = [
        (
            "grant_type",
            "urn:ietf:params:oauth:grant-type:token-exchange",
        ),
        ("subject_token", "idt-alice"),
        (
            "subject_token_type",
            "urn:ietf:params:oauth:token-type:id_token",
        ),
        (
            "requested_token_type",
            "urn:ietf:params:oauth:token-type:access_token",
        ),
        ("connector_id", "central"),
        ("scope", "openid profile email groups"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    assert_eq!(seen.form, expected);
    // RFC 6749 2.3.1: each part form-urlencoded, then base64 of "id:secret".
    let want = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD
            .encode("flotilla+gw:CLIENT-SECRET-QV93%3A%2B%2F%26")
    );
    assert_eq!(seen.authorization.as_deref(), Some(want.as_str()));
}

#[tokio::test]
async fn connector_id_is_left_out_when_not_configured() {
    let stub = Stub::start().await;
    let mut target = stub.target();
    target.connector_id = None;
    exchanger(settings())
        .token(&user("alice", "idt-alice"), &target)
        .await
        .expect("exchanged");
    let seen = stub
        .state
        .last
        .lock()
        .expect("lock")
        .take()
        .expect("a request");
    assert!(!seen.form.contains_key("connector_id"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundred_concurrent_misses_share_one_exchange() {
    let stub = Stub::start().await;
    stub.delay(Duration::from_millis(200));
    let exchanger = exchanger(settings());
    let target = stub.target();
    let alice = user("alice", "idt-alice");
    let calls = (0..100).map(|_| {
        let (exchanger, target, alice) = (exchanger.clone(), target.clone(), alice.clone());
        tokio::spawn(async move { exchanger.token(&alice, &target).await })
    });
    let results = futures::future::join_all(calls).await;
    for result in results {
        assert_eq!(
            result.expect("task").expect("token").expose(),
            "xt-1-idt-alice"
        );
    }
    assert_eq!(stub.requests(), 1);
    assert_eq!(exchanger.exchanges_sent(), 1);
    // And later calls are plain hits.
    exchanger.token(&alice, &target).await.expect("hit");
    assert_eq!(stub.requests(), 1);
}

#[tokio::test]
async fn an_exchanged_token_is_cached_no_longer_than_the_users_id_token() {
    let stub = Stub::start().await;
    stub.reply(Reply::Opaque {
        expires_in: Some(3600),
    });
    let exchanger = exchanger(TokenCacheSettings {
        safety_margin: Duration::ZERO,
        refresh_ahead: Duration::ZERO,
        ..settings()
    });
    let mut alice = user("alice", "idt-alice");
    alice.expires_at = Some(chrono::Utc::now() + chrono::Duration::milliseconds(1000));
    let target = stub.target();
    let first = exchanger.token(&alice, &target).await.expect("first");
    let cached = exchanger.token(&alice, &target).await.expect("cached");
    assert_eq!(first.expose(), cached.expose());
    assert_eq!(stub.requests(), 1);
    // The ID token is over (the user refreshed): the next call exchanges the new one.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let refreshed = user("alice", "idt-alice-2");
    let next = exchanger.token(&refreshed, &target).await.expect("next");
    assert_eq!(next.expose(), "xt-2-idt-alice-2");
    assert_eq!(stub.requests(), 2);
}

#[tokio::test]
async fn token_shorter_lived_than_the_safety_margin_is_exchanged_again() {
    let stub = Stub::start().await;
    stub.reply(Reply::Opaque {
        expires_in: Some(5),
    });
    let exchanger = exchanger(settings()); // margin 30s > 5s
    let (alice, target) = (user("alice", "idt-alice"), stub.target());
    let first = exchanger.token(&alice, &target).await.expect("first");
    let second = exchanger.token(&alice, &target).await.expect("second");
    assert_eq!(first.expose(), "xt-1-idt-alice");
    assert_eq!(second.expose(), "xt-2-idt-alice");
    assert_eq!(stub.requests(), 2);
}

#[tokio::test]
async fn entry_expires_after_its_lifetime_minus_the_margin() {
    let stub = Stub::start().await;
    stub.reply(Reply::Opaque {
        expires_in: Some(2),
    });
    let exchanger = exchanger(TokenCacheSettings {
        safety_margin: Duration::from_secs(1),
        refresh_ahead: Duration::ZERO,
        ..settings()
    });
    let (alice, target) = (user("alice", "idt-alice"), stub.target());
    exchanger.token(&alice, &target).await.expect("first");
    exchanger.token(&alice, &target).await.expect("hit");
    assert_eq!(stub.requests(), 1);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let again = exchanger
        .token(&alice, &target)
        .await
        .expect("after expiry");
    assert_eq!(again.expose(), "xt-2-idt-alice");
    assert_eq!(stub.requests(), 2);
}

#[tokio::test]
async fn hit_near_expiry_refreshes_once_in_the_background() {
    let stub = Stub::start().await;
    stub.reply(Reply::Opaque {
        expires_in: Some(2),
    });
    let exchanger = exchanger(TokenCacheSettings {
        safety_margin: Duration::ZERO,
        refresh_ahead: Duration::from_secs(60),
        ..settings()
    });
    let (alice, target) = (user("alice", "idt-alice"), stub.target());
    let first = exchanger.token(&alice, &target).await.expect("first");
    // Refresh starts no earlier than half-way through the 2s lifetime.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    stub.delay(Duration::from_millis(200));
    for _ in 0..20 {
        let served = exchanger.token(&alice, &target).await.expect("hit");
        assert_eq!(served.expose(), first.expose(), "still-valid token served");
    }
    assert_eq!(
        stub.requests_after_waiting_for(2).await,
        2,
        "exactly one background refresh"
    );
    tokio::time::sleep(Duration::from_millis(250)).await;
    let fresh = exchanger.token(&alice, &target).await.expect("refreshed");
    assert_eq!(fresh.expose(), "xt-2-idt-alice");
}

#[tokio::test]
async fn failed_refresh_keeps_serving_the_current_token_until_it_expires() {
    let stub = Stub::start().await;
    stub.reply(Reply::Opaque {
        expires_in: Some(3),
    });
    let exchanger = exchanger(TokenCacheSettings {
        safety_margin: Duration::ZERO,
        refresh_ahead: Duration::from_secs(60),
        ..settings()
    });
    let (alice, target) = (user("alice", "idt-alice"), stub.target());
    let first = exchanger.token(&alice, &target).await.expect("first");
    tokio::time::sleep(Duration::from_millis(1600)).await;
    stub.reply(Reply::Status(503));
    let served = exchanger.token(&alice, &target).await.expect("hit");
    assert_eq!(served.expose(), first.expose());
    assert_eq!(
        stub.requests_after_waiting_for(2).await,
        2,
        "the refresh was attempted"
    );
    // Within the backoff window no further refresh goes out.
    let served = exchanger.token(&alice, &target).await.expect("hit");
    assert_eq!(served.expose(), first.expose());
    assert_eq!(stub.requests(), 2);
    // After the window the next hit tries again, still serving the old token.
    tokio::time::sleep(Duration::from_millis(350)).await;
    let served = exchanger.token(&alice, &target).await.expect("hit");
    assert_eq!(served.expose(), first.expose());
    assert_eq!(stub.requests_after_waiting_for(3).await, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_concurrent_rejections_share_one_re_exchange() {
    let stub = Stub::start().await;
    let exchanger = exchanger(settings());
    let (alice, target) = (user("alice", "idt-alice"), stub.target());
    let rejected = exchanger.token(&alice, &target).await.expect("first");
    assert_eq!(stub.requests(), 1);
    stub.delay(Duration::from_millis(100));

    let calls = (0..50).map(|_| {
        let (exchanger, target, alice, rejected) = (
            exchanger.clone(),
            target.clone(),
            alice.clone(),
            rejected.clone(),
        );
        tokio::spawn(async move {
            exchanger
                .token_after_rejection(&alice, &target, &rejected)
                .await
        })
    });
    for result in futures::future::join_all(calls).await {
        assert_eq!(
            result.expect("task").expect("token").expose(),
            "xt-2-idt-alice"
        );
    }
    assert_eq!(stub.requests(), 2, "one re-exchange for all fifty");

    // A late rejection of the already-replaced token exchanges nothing.
    let late = exchanger
        .token_after_rejection(&alice, &target, &rejected)
        .await
        .expect("replacement");
    assert_eq!(late.expose(), "xt-2-idt-alice");
    assert_eq!(stub.requests(), 2);
    assert_eq!(
        exchanger
            .token(&alice, &target)
            .await
            .expect("hit")
            .expose(),
        "xt-2-idt-alice"
    );
}

#[tokio::test]
async fn rejection_with_nothing_cached_exchanges_once() {
    let stub = Stub::start().await;
    let exchanger = exchanger(settings());
    let (alice, target) = (user("alice", "idt-alice"), stub.target());
    let stale = SecretValue::new("from-an-old-process".into());
    let fresh = exchanger
        .token_after_rejection(&alice, &target, &stale)
        .await
        .expect("token");
    assert_eq!(fresh.expose(), "xt-1-idt-alice");
    assert_eq!(
        exchanger
            .token(&alice, &target)
            .await
            .expect("hit")
            .expose(),
        "xt-1-idt-alice"
    );
    assert_eq!(stub.requests(), 1);
}

#[tokio::test]
async fn failed_re_exchange_drops_the_rejected_token() {
    let stub = Stub::start().await;
    let exchanger = exchanger(settings());
    let (alice, target) = (user("alice", "idt-alice"), stub.target());
    let rejected = exchanger.token(&alice, &target).await.expect("first");
    stub.reply(Reply::Status(500));
    let err = exchanger
        .token_after_rejection(&alice, &target, &rejected)
        .await
        .expect_err("endpoint failing");
    assert!(
        matches!(err, ExchangeError::HttpStatus { status: 500, .. }),
        "{err}"
    );
    // The rejected token is not served again; the key is backing off.
    let err = exchanger
        .token(&alice, &target)
        .await
        .expect_err("no token");
    assert!(matches!(err, ExchangeError::Backoff { .. }), "{err}");
}

#[tokio::test]
async fn failures_back_off_without_contacting_the_endpoint() {
    let stub = Stub::start().await;
    stub.reply(Reply::OAuthError {
        status: 401,
        error: "access_denied",
        description: "no such user".into(),
    });
    let exchanger = exchanger(settings()); // backoff 300ms doubling to 2s
    let (alice, target) = (user("alice", "idt-alice"), stub.target());

    let err = exchanger.token(&alice, &target).await.expect_err("denied");
    assert_eq!(
        err.to_string(),
        "exchange rejected: access_denied: no such user"
    );
    assert_eq!(stub.requests(), 1);

    let err = exchanger
        .token(&alice, &target)
        .await
        .expect_err("backing off");
    assert_eq!(
        err.to_string(),
        "exchange failed recently (exchange rejected: access_denied: no such user); retrying in 1s"
    );
    assert_eq!(stub.requests(), 1, "no request inside the window");

    // After the window: one attempt, which fails and doubles the window.
    tokio::time::sleep(Duration::from_millis(350)).await;
    exchanger
        .token(&alice, &target)
        .await
        .expect_err("denied again");
    assert_eq!(stub.requests(), 2);
    tokio::time::sleep(Duration::from_millis(350)).await;
    let err = exchanger
        .token(&alice, &target)
        .await
        .expect_err("600ms window");
    assert!(matches!(err, ExchangeError::Backoff { .. }), "{err}");
    assert_eq!(stub.requests(), 2);

    // Success resets it.
    tokio::time::sleep(Duration::from_millis(300)).await;
    stub.reply(Reply::Opaque {
        expires_in: Some(3600),
    });
    exchanger.token(&alice, &target).await.expect("recovered");
    assert_eq!(stub.requests(), 3);
    // Other users are not held back by alice's failures.
    let bob = user("bob", "idt-bob");
    stub.reply(Reply::Status(502));
    exchanger.token(&bob, &target).await.expect_err("bob fails");
    let err = exchanger.token(&alice, &target).await;
    assert!(err.is_ok(), "alice's cached token still served");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_callers_during_a_failing_exchange_share_its_error() {
    let stub = Stub::start().await;
    stub.reply(Reply::Status(503));
    stub.delay(Duration::from_millis(200));
    let exchanger = exchanger(settings());
    let (alice, target) = (user("alice", "idt-alice"), stub.target());
    let calls = (0..20).map(|_| {
        let (exchanger, target, alice) = (exchanger.clone(), target.clone(), alice.clone());
        tokio::spawn(async move { exchanger.token(&alice, &target).await })
    });
    for result in futures::future::join_all(calls).await {
        assert!(result.expect("task").is_err());
    }
    assert_eq!(stub.requests(), 1);
}

#[tokio::test]
async fn cached_token_keeps_working_while_the_endpoint_is_down() {
    let stub = Stub::start().await;
    let exchanger = exchanger(settings());
    let (alice, target) = (user("alice", "idt-alice"), stub.target());
    let first = exchanger.token(&alice, &target).await.expect("first");
    // Down: failing, then gone (pooled connections may outlive the listener).
    stub.reply(Reply::Status(503));
    drop(stub);
    for _ in 0..3 {
        let again = exchanger.token(&alice, &target).await.expect("cached");
        assert_eq!(again.expose(), first.expose());
    }
    // A user with nothing cached sees the outage.
    exchanger
        .token(&user("bob", "idt-bob"), &target)
        .await
        .expect_err("endpoint down");
}

#[tokio::test]
async fn unreachable_endpoint_is_reported_with_its_url() {
    let stub = Stub::start().await;
    let mut target = stub.target();
    // Nothing listens on port 1.
    target.endpoint = "http://127.0.0.1:1/dex/token".into();
    let err = exchanger(settings())
        .token(&user("alice", "idt-alice"), &target)
        .await
        .expect_err("refused");
    assert!(matches!(err, ExchangeError::Unreachable { .. }), "{err}");
    assert!(
        err.to_string()
            .starts_with("token exchange endpoint http://127.0.0.1:1/dex/token unreachable: "),
        "{err}"
    );
}

#[tokio::test]
async fn two_users_never_get_each_others_token() {
    let stub = Stub::start().await;
    let exchanger = exchanger(settings());
    let target = stub.target();
    let alice = user("alice", "idt-alice");
    let bob = user("bob", "idt-bob");
    let mut mallory = user("alice", "idt-mallory");
    mallory.key.issuer = "https://other-issuer.example".into();

    let a = exchanger.token(&alice, &target).await.expect("alice");
    let b = exchanger.token(&bob, &target).await.expect("bob");
    let m = exchanger
        .token(&mallory, &target)
        .await
        .expect("same subject, other issuer");
    assert_eq!(a.expose(), "xt-1-idt-alice");
    assert_eq!(b.expose(), "xt-2-idt-bob");
    assert_eq!(m.expose(), "xt-3-idt-mallory");
    assert_eq!(
        exchanger
            .token(&alice, &target)
            .await
            .expect("hit")
            .expose(),
        a.expose()
    );
    assert_eq!(
        exchanger.token(&bob, &target).await.expect("hit").expose(),
        b.expose()
    );
    // Bob's rejection of his token does not touch alice's.
    exchanger
        .token_after_rejection(&bob, &target, &b)
        .await
        .expect("bob again");
    assert_eq!(
        exchanger
            .token(&alice, &target)
            .await
            .expect("hit")
            .expose(),
        a.expose()
    );
    assert_eq!(stub.requests(), 4);
}

#[tokio::test]
async fn targets_differing_in_scopes_are_cached_apart() {
    let stub = Stub::start().await;
    let exchanger = exchanger(settings());
    let alice = user("alice", "idt-alice");
    let plain = stub.target();
    let mut narrow = stub.target();
    narrow.scopes = "openid".into();
    exchanger.token(&alice, &plain).await.expect("plain");
    exchanger.token(&alice, &narrow).await.expect("narrow");
    assert_eq!(stub.requests(), 2);
}
