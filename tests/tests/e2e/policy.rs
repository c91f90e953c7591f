//! What a subscription may reach (issue 28), on the real API server: an image outside the
//! operator's list and a Secret nobody marked referenceable are named in the status and
//! nothing is created for them (marking the Secret lets the pass go on, through the
//! operator's metadata-only Secret watch); an app callback someone else set is left alone
//! at the fake Graph API until the spec takes it over.

use metahook_tests::fake_graph::AppSub;
use metahook_tests::testkit::VERIFY_TOKEN;

use super::registration::{Registering, opaque_secret};
use super::*;

/// Waits until `sub`'s condition `type_` has `status`, and returns it.
async fn wait_condition(
    api: &Api<WebhookSubscription>,
    operator: &Operator,
    name: &str,
    type_: &'static str,
    status: &'static str,
) -> Result<Condition> {
    wait_for(&format!("{type_}={status}"), WAIT, Some(operator), || {
        let api = api.clone();
        let name = name.to_owned();
        async move {
            let current = api.get(&name).await?;
            Ok(condition(&current, type_)
                .filter(|c| c.status == status)
                .cloned())
        }
    })
    .await
}

/// The objects a pass would create for `name`, which exist in `namespace`.
async fn children_present(client: &Client, namespace: &str, name: &str) -> Result<Vec<String>> {
    let mut present = Vec::new();
    let config_map = format!("{name}-receiver");
    if Api::<ConfigMap>::namespaced(client.clone(), namespace)
        .get_opt(&config_map)
        .await?
        .is_some()
    {
        present.push(format!("ConfigMap {config_map}"));
    }
    if Api::<Deployment>::namespaced(client.clone(), namespace)
        .get_opt(name)
        .await?
        .is_some()
    {
        present.push(format!("Deployment {name}"));
    }
    if Api::<StatefulSet>::namespaced(client.clone(), namespace)
        .get_opt(name)
        .await?
        .is_some()
    {
        present.push(format!("StatefulSet {name}"));
    }
    if Api::<Service>::namespaced(client.clone(), namespace)
        .get_opt(name)
        .await?
        .is_some()
    {
        present.push(format!("Service {name}"));
    }
    if Api::<Ingress>::namespaced(client.clone(), namespace)
        .get_opt(name)
        .await?
        .is_some()
    {
        present.push(format!("Ingress {name}"));
    }
    Ok(present)
}

#[tokio::test]
async fn an_image_outside_the_allowed_list_is_refused_and_nothing_is_created() -> Result<()> {
    let mut world = world_with("e2e-image", Some("acme-whatsapp"), |sub| {
        as_deployment(sub);
        sub.spec.receiver.image = Some("evil.example/secret-reader:1".to_owned());
    })
    .await?;
    let sub = world.subscriptions[0].clone();
    let name = sub.name_any();
    let namespace = sub.namespace().context("namespace")?;
    let api: Api<WebhookSubscription> = Api::namespaced(world.client.clone(), &namespace);
    let ready = wait_condition(&api, &world.operator, &name, "Ready", "False").await?;
    ensure!(
        ready.reason == "ImageNotAllowed"
            && ready.message.contains("evil.example/secret-reader:1")
            && ready.message.contains("--allowed-receiver-image"),
        "the condition names the image and the list: {ready:?}"
    );
    let events = events_of(&world.client, &sub).await?;
    ensure!(
        events.iter().any(|e| e.type_.as_deref() == Some("Warning")
            && e.reason.as_deref() == Some("ImageNotAllowed")),
        "a Warning Event: {events:?}"
    );
    let present = children_present(&world.client, &namespace, &name).await?;
    ensure!(
        present.is_empty(),
        "created despite the refusal: {present:?}"
    );
    let token = Api::<Secret>::namespaced(world.client.clone(), &namespace)
        .get_opt(&format!("{name}-verify-token"))
        .await?;
    ensure!(token.is_none(), "a refused pass generated the verify token");
    // The refusal is logged as a warning; the operator runs on.
    world.operator.check_running()?;
    Ok(())
}

#[tokio::test]
async fn an_unmarked_secret_is_named_and_nothing_is_created_until_it_is_marked() -> Result<()> {
    let cluster = Cluster::shared()?;
    let client = cluster.client().await?;
    install_crd(&client).await?;
    let prepared = prepare(
        &client,
        "e2e-unmarked",
        Some("acme-whatsapp"),
        as_deployment,
    )
    .await?;
    let namespace = prepared.namespaces[0].clone();
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &namespace);
    // The app secret as a namespace admin left it: not marked.
    let unmark = json!({"metadata": {"labels": {"metahook.io/referenceable": null}}});
    secrets
        .patch(
            "meta-whatsapp-app",
            &PatchParams::default(),
            &Patch::Merge(&unmark),
        )
        .await
        .context("unmarking the app secret")?;
    let operator = Operator::start(cluster, &prepared.watched())?;
    let created = create_subscriptions(&client, &prepared.subscriptions).await?;
    let name = created[0].name_any();
    let api: Api<WebhookSubscription> = Api::namespaced(client.clone(), &namespace);

    let resolved = wait_condition(&api, &operator, &name, "SecretsResolved", "False").await?;
    ensure!(
        resolved.reason == "SecretNotReferenceable"
            && resolved.message.contains("meta-whatsapp-app")
            && resolved
                .message
                .contains("kubectl label secret meta-whatsapp-app metahook.io/referenceable=true"),
        "the condition names the Secret and how to mark it: {resolved:?}"
    );
    let present = children_present(&client, &namespace, &name).await?;
    ensure!(
        present.is_empty(),
        "created despite the unmarked Secret: {present:?}"
    );

    // Marked: the watch (metadata only, selected by the label) starts a pass at once.
    let mark = json!({"metadata": {"labels": {"metahook.io/referenceable": "true"}}});
    secrets
        .patch(
            "meta-whatsapp-app",
            &PatchParams::default(),
            &Patch::Merge(&mark),
        )
        .await
        .context("marking the app secret")?;
    wait_condition(&api, &operator, &name, "SecretsResolved", "True").await?;
    let present = children_present(&client, &namespace, &name).await?;
    ensure!(
        present.iter().any(|p| p.starts_with("Deployment")),
        "the receiver after the Secret was marked: {present:?}"
    );
    assert_clean_log(&operator)?;
    Ok(())
}

#[tokio::test]
async fn a_callback_someone_else_set_is_left_alone_until_taken_over() -> Result<()> {
    const APP: &str = "1234";
    const APP_SECRET: &str = "e2e-takeover-app-secret";
    let cluster = Cluster::shared()?;
    let client = cluster.client().await?;
    install_crd(&client).await?;
    let namespace = format!("takeover-{}", run_suffix());
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

    let Registering {
        receiver: _receiver,
        graph,
        mut operator,
        callback,
    } = Registering::start(cluster, &namespace, APP, APP_SECRET).await?;
    // The production app already delivers to another team's host.
    let theirs = "https://prod.other-team.example/meta".to_owned();
    graph.with(|s| {
        s.subscriptions.insert(
            "whatsapp_business_account".to_owned(),
            AppSub {
                callback_url: theirs.clone(),
                fields: vec!["messages".to_owned()],
                verify_token: "their-token".to_owned(),
                active: true,
            },
        )
    });
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
            "registration": {"appId": APP, "callbackURL": callback},
        },
    }))?;
    let api: Api<WebhookSubscription> = Api::namespaced(client.clone(), &namespace);
    api.create(&PostParams::default(), &subscription).await?;

    let registered = wait_condition(&api, &operator, "wa", "Registered", "False").await;
    // The first False may be WaitingForReceiver; wait for the refusal itself.
    let refused = match registered {
        Ok(c) if c.reason == "CallbackOwnedElsewhere" => c,
        _ => {
            wait_for(
                "Registered CallbackOwnedElsewhere",
                WAIT,
                Some(&operator),
                || {
                    let api = api.clone();
                    async move {
                        let current = api.get("wa").await?;
                        Ok(condition(&current, "Registered")
                            .filter(|c| c.reason == "CallbackOwnedElsewhere")
                            .cloned())
                    }
                },
            )
            .await?
        }
    };
    ensure!(
        refused.status == "False"
            && refused.message.contains("prod.other-team.example")
            && refused
                .message
                .contains("spec.registration.takeOverCallback"),
        "the condition names the current host and the field: {refused:?}"
    );
    ensure!(
        graph.log().iter().all(|l| l.method == http::Method::GET),
        "a Graph write: {:?}",
        graph.log()
    );
    ensure!(
        graph
            .subscription("whatsapp_business_account")
            .is_some_and(|s| s.callback_url == theirs && s.verify_token == "their-token"),
        "their callback and token stay"
    );

    // Taken over: replaced with this subscription's callback and token.
    let patch = json!({"spec": {"registration": {"takeOverCallback": true}}});
    api.patch("wa", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .context("setting takeOverCallback")?;
    wait_condition(&api, &operator, "wa", "Registered", "True").await?;
    let at_meta = graph
        .subscription("whatsapp_business_account")
        .context("the app subscription")?;
    ensure!(
        at_meta.callback_url == callback && at_meta.verify_token == VERIFY_TOKEN,
        "replaced: {at_meta:?}"
    );

    api.delete("wa", &DeleteParams::default()).await?;
    wait_for("the subscription to be gone", WAIT, Some(&operator), || {
        let api = api.clone();
        async move { Ok(api.get_opt("wa").await?.is_none().then_some(())) }
    })
    .await?;
    operator.check_running()?;
    Ok(())
}
