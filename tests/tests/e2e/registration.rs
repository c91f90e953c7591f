//! Registration with Meta end to end: a subscription with `spec.registration` on the real
//! API server, the operator process pointed at the local fake Graph API (which verifies
//! the callback against a real receiver, as Meta does), registered once the receiver is
//! ready, then unregistered by the finalizer when the subscription is deleted.
//!
//! The receiver runs in this process ([`TestReceiver`]) and the subscription is a sidecar
//! (no kubelet runs pods here, and a sidecar counts as ready), whose callback URL is the
//! test receiver's.

use metahook_tests::fake_graph::{self, FakeGraph};
use metahook_tests::testkit::{PATH, TestReceiver, VERIFY_TOKEN};

use super::*;

const APP: &str = "1234";
const APP_SECRET: &str = "e2e-app-secret";
const WABA: &str = "5550001";
const WABA_TOKEN: &str = "e2e-system-user-token";

pub(super) async fn opaque_secret(
    client: &Client,
    namespace: &str,
    name: &str,
    key: &str,
    value: &str,
) -> Result<()> {
    let object = Secret {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            namespace: Some(namespace.to_owned()),
            labels: Some(BTreeMap::from([(
                metahook_operator::policy::REFERENCEABLE_LABEL.to_owned(),
                "true".to_owned(),
            )])),
            ..ObjectMeta::default()
        },
        type_: Some("Opaque".to_owned()),
        data: Some(BTreeMap::from([(
            key.to_owned(),
            ByteString(value.as_bytes().to_vec()),
        )])),
        ..Secret::default()
    };
    Api::<Secret>::namespaced(client.clone(), namespace)
        .create(&PostParams::default(), &object)
        .await
        .with_context(|| format!("creating Secret {namespace}/{name}"))?;
    Ok(())
}

/// What a registration test runs beside the cluster: a receiver serving an https callback
/// (Meta calls no other, and the operator refuses an http one) with a certificate the fake
/// Graph API trusts, the fake Graph API serving app `app_id` with `app_secret`, and an
/// operator on `namespace` pointed at it.
pub(super) struct Registering {
    /// The callback's receiver.
    pub receiver: TestReceiver,
    /// The fake Graph API.
    pub graph: FakeGraph,
    /// The operator.
    pub operator: Operator,
    /// The callback URL: the receiver's path over https.
    pub callback: String,
}

impl Registering {
    pub(super) async fn start(
        cluster: &Cluster,
        namespace: &str,
        app_id: &str,
        app_secret: &str,
    ) -> Result<Registering> {
        let callback_ca = Ca::new("e2e callback CA")?;
        let receiver = TestReceiver::start_https(&callback_ca).await?;
        let graph = FakeGraph::start(app_id, app_secret).await?;
        graph.trust_callbacks_of(&callback_ca);
        let operator = Operator::start_with(
            cluster.kubeconfig(),
            &[
                "--no-leader-election".to_owned(),
                format!("--namespace={namespace}"),
                format!("--graph-url={}", graph.url()),
                format!("--graph-api-version={}", fake_graph::VERSION),
                "--graph-retry-backoff=100ms".to_owned(),
                "--graph-unregister-timeout=30s".to_owned(),
                // The test receiver's callback host.
                "--allowed-callback-host=127.0.0.1".to_owned(),
            ],
        )?;
        let callback = format!("https://{}{PATH}", receiver.addr);
        Ok(Registering {
            receiver,
            graph,
            operator,
            callback,
        })
    }
}

#[tokio::test]
async fn a_subscription_is_registered_with_meta_and_unregistered_on_deletion() -> Result<()> {
    let cluster = Cluster::shared()?;
    let client = cluster.client().await?;
    install_crd(&client).await?;
    let namespace = format!("reg-{}", run_suffix());
    create_namespace(&client, &namespace).await?;
    opaque_secret(&client, &namespace, "meta-app", "app-secret", APP_SECRET).await?;
    opaque_secret(
        &client,
        &namespace,
        "meta-verify",
        "verify-token",
        VERIFY_TOKEN,
    )
    .await?;
    opaque_secret(&client, &namespace, "wa-system-user", "token", WABA_TOKEN).await?;

    let Registering {
        receiver: _receiver,
        graph,
        mut operator,
        callback,
    } = Registering::start(cluster, &namespace, APP, APP_SECRET).await?;
    graph.add_node(WABA, WABA_TOKEN);
    let subscription: WebhookSubscription = serde_json::from_value(json!({
        "apiVersion": "metahook.io/v1alpha1",
        "kind": "WebhookSubscription",
        "metadata": {"name": "wa", "namespace": namespace},
        "spec": {
            "object": "whatsapp_business_account",
            "fields": ["messages"],
            "appSecretRef": {"name": "meta-app", "key": "app-secret"},
            "verifyTokenRef": {"name": "meta-verify", "key": "verify-token"},
            "receiver": {"mode": "sidecar"},
            "registration": {
                "appId": APP,
                "callbackURL": callback,
                "whatsappBusinessAccounts": [{
                    "id": WABA,
                    "accessTokenRef": {"name": "wa-system-user", "key": "token"},
                    "overrideCallback": true,
                }],
            },
        },
    }))?;
    let api: Api<WebhookSubscription> = Api::namespaced(client.clone(), &namespace);
    api.create(&PostParams::default(), &subscription).await?;

    let registered = wait_for("Registered=True", WAIT, Some(&operator), || {
        let api = api.clone();
        async move {
            let sub = api.get("wa").await?;
            Ok(condition(&sub, "Registered")
                .filter(|c| c.status == "True")
                .map(|_| sub.clone()))
        }
    })
    .await?;
    operator.check_running()?;
    let at_meta = graph
        .subscription("whatsapp_business_account")
        .context("the app subscription at the fake Graph API")?;
    ensure!(
        at_meta.callback_url == callback,
        "callback {}",
        at_meta.callback_url
    );
    ensure!(
        at_meta.fields == ["messages"],
        "fields {:?}",
        at_meta.fields
    );
    ensure!(
        graph.edge(WABA).and_then(|e| e.override_callback_uri) == Some(callback.clone()),
        "the WABA override"
    );
    ensure!(
        registered
            .finalizers()
            .iter()
            .any(|f| f == "metahook.io/graph-registration"),
        "finalizer"
    );
    let status = registered
        .status
        .as_ref()
        .and_then(|s| s.registration.as_ref())
        .context("status.registration")?;
    ensure!(status.registered_fields == ["messages"]);
    let events = events_of(&client, &registered).await?;
    ensure!(
        events
            .iter()
            .any(|e| e.reason.as_deref() == Some("Registered")),
        "a Registered Event"
    );

    api.delete("wa", &DeleteParams::default()).await?;
    wait_for("the subscription to be gone", WAIT, Some(&operator), || {
        let api = api.clone();
        async move { Ok(api.get_opt("wa").await?.is_none().then_some(())) }
    })
    .await?;
    ensure!(
        graph.subscription("whatsapp_business_account").is_none(),
        "the app subscription is removed"
    );
    ensure!(graph.edge(WABA).is_none(), "the WABA edge is removed");
    assert_clean_log(&operator)?;
    Ok(())
}
