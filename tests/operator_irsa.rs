//! IRSA for the operator's own repository work, on the real control plane (tests/support/cluster)
//! with the operator holding only the chart's RBAC and the tenant the Role of deploy/tenant/:
//! a BackupPolicy without `credentialsSecret` whose ServiceAccount carries
//! `eks.amazonaws.com/role-arn` is served with that role's temporary keys. The operator asks the
//! API server for a token of the account *as the account*, exchanges it at the STS stand-in on
//! loopback (`AWS_ENDPOINT_URL_STS`) and signs every S3 request with the issued keys and
//! session token (seen by a recording proxy in front of the S3 server). Without the annotation
//! the policy still gets `CredentialsRequired`; a role STS refuses ends with STS's message and
//! no token in sight; an account whose Role lacks the token rule is told which rule to add; and
//! the operator's own keys are never used.

use crate::support;

use std::path::Path;
use std::time::Duration;

use base64::Engine;
use berth::api::{Backup, BackupPolicy};
use k8s_openapi::ByteString;
use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use k8s_openapi::api::core::v1::{Secret, ServiceAccount};
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::{Value, json};
use support::cluster::{Cluster, OPERATOR_USER};
use support::objects::create;
use support::operator::Operator;
use support::s3_recorder::S3Recorder;
use support::servers::S3Server;
use support::sts::{Issued, StsStandIn};
use support::wait::eventually;

const NS: &str = "shop";
const WAIT: Duration = Duration::from_secs(120);
const ROLE_ARN: &str = "arn:aws:iam::111122223333:role/shop-backups";
const TENANT: &str = "system:serviceaccount:shop:berth-backup";
const SESSION_TOKEN: &str = "FwoGZXIvYXdzEBYaDoperator-irsa-session-token";

fn backup(name: &str, account: Option<&str>) -> Value {
    let mut b = json!({"apiVersion": "berth.dev/v1alpha1", "kind": "Backup", "metadata": {"name": name},
                       "spec": {"policyName": "nightly"}});
    if let Some(account) = account {
        b["spec"]["serviceAccountName"] = json!(account);
    }
    b
}

async fn ended(backups: &Api<Backup>, name: &str) -> Backup {
    eventually(&format!("{name} ends"), WAIT, || async {
        let b = backups.get(name).await.ok()?;
        let phase = b.status.as_ref()?.phase.clone()?;
        matches!(phase.as_str(), "Completed" | "PartiallyFailed" | "Failed").then_some(b)
    })
    .await
}

fn ready_message(b: &Backup) -> String {
    let ready = b.status.as_ref().unwrap().conditions.iter().find(|c| c.type_ == "Ready").unwrap();
    ready.message.clone()
}

/// The claims of a JWT (its middle part), unverified.
fn claims(token: &str) -> Value {
    let payload = token.split('.').nth(1).expect("a JWT");
    serde_json::from_slice(&base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_policy_without_keys_uses_the_iam_role_of_its_service_account() {
    let s3 = S3Server::start();
    s3.create_bucket("backups");
    let recorder = S3Recorder::start(&s3.endpoint);
    // s3s-fs knows one key pair and ignores session tokens: STS hands out that pair with a
    // session token, as AWS STS hands out a temporary pair with one.
    let sts = StsStandIn::start(Issued {
        access_key_id: s3.access_key.clone(),
        secret_access_key: s3.secret_key.clone(),
        session_token: SESSION_TOKEN.into(),
    });
    let cluster = Cluster::start().await;
    cluster.install_crds_from_dir(&Path::new(env!("CARGO_MANIFEST_DIR")).join("crds")).await;
    cluster.namespace(NS).await;
    cluster.tenant_account(NS);
    let client = cluster.client();
    let secrets: Api<Secret> = Api::namespaced(client.clone(), NS);
    let key = Secret {
        metadata: kube::api::ObjectMeta { name: Some("repository-key".into()), ..Default::default() },
        data: Some([("key".to_string(), ByteString(b"correct horse battery staple\n".to_vec()))].into()),
        ..Secret::default()
    };
    secrets.create(&PostParams::default(), &key).await.unwrap();
    let _: BackupPolicy = create(
        &client,
        NS,
        json!({
            "apiVersion": "berth.dev/v1alpha1", "kind": "BackupPolicy",
            "metadata": {"name": "nightly", "namespace": NS},
            "spec": {
                "schedule": "0 3 * * *", "suspend": true,
                "storage": {"bucket": "backups", "prefix": "shop", "region": s3.region, "endpoint": recorder.endpoint,
                            "forcePathStyle": true, "insecureHTTP": true, "encryptionKeySecret": "repository-key"},
                "scope": {"databases": false},
                "retention": {"keepLast": 5}
            }
        }),
    )
    .await;
    // The operator holds keys of its own (as its IRSA role would give it): never used here.
    let kubeconfig = cluster.operator_kubeconfig(&[]).await;
    let env = [
        ("AWS_ENDPOINT_URL_STS", sts.endpoint.as_str()),
        ("AWS_ACCESS_KEY_ID", s3.access_key.as_str()),
        ("AWS_SECRET_ACCESS_KEY", s3.secret_key.as_str()),
        ("AWS_EC2_METADATA_DISABLED", "true"),
    ];
    let mut operator = Operator::start_with_env(&kubeconfig, &["--leader-election=false"], &env);
    operator.wait_ready(WAIT);
    let backups: Api<Backup> = Api::namespaced(client.clone(), NS);

    // No annotation: still CredentialsRequired, naming both ways out.
    let _: Backup = create(&client, NS, backup("no-role", None)).await;
    let refused = ended(&backups, "no-role").await;
    assert_eq!(refused.status.as_ref().unwrap().phase.as_deref(), Some("Failed"));
    let message = ready_message(&refused);
    assert!(message.starts_with("CredentialsRequired: spec.storage.credentialsSecret is not set"), "{message}");
    assert!(message.contains("eks.amazonaws.com/role-arn"), "{message}");
    assert!(sts.calls().is_empty(), "{:?}", sts.calls());
    assert!(recorder.requests().is_empty(), "nothing reached S3 with the operator's own keys");

    // The namespace's admin annotates the account: the operator assumes that role for it.
    let accounts: Api<ServiceAccount> = Api::namespaced(client.clone(), NS);
    let annotate = json!({"metadata": {"annotations": {"eks.amazonaws.com/role-arn": ROLE_ARN}}});
    accounts.patch("berth-backup", &PatchParams::default(), &Patch::Merge(&annotate)).await.unwrap();
    let mark = cluster.audit.mark();
    let _: Backup = create(&client, NS, backup("with-role", None)).await;
    let done = ended(&backups, "with-role").await;
    assert_eq!(done.status.as_ref().unwrap().phase.as_deref(), Some("Completed"), "{:?}", done.status);
    assert!(s3.root().join("backups/shop/backups/with-role").exists(), "the manifest is in the bucket");

    // STS saw a token the API server issued for the tenant's account, for STS.
    let calls = sts.calls();
    assert!(!calls.is_empty());
    for call in &calls {
        assert_eq!(call["Action"], "AssumeRoleWithWebIdentity");
        assert_eq!(call["RoleArn"], ROLE_ARN);
        assert_eq!(call["RoleSessionName"], "berth-shop-berth-backup");
        let token = &call["WebIdentityToken"];
        assert_eq!(claims(token)["sub"], TENANT);
        let review = TokenReview {
            spec: TokenReviewSpec { token: Some(token.clone()), audiences: Some(vec!["sts.amazonaws.com".into()]) },
            ..TokenReview::default()
        };
        let reviewed = Api::<TokenReview>::all(client.clone()).create(&PostParams::default(), &review).await.unwrap();
        let status = reviewed.status.unwrap();
        assert_eq!(status.authenticated, Some(true), "{status:?}");
        assert_eq!(status.user.unwrap().username.as_deref(), Some(TENANT));
        assert_eq!(status.audiences, Some(vec!["sts.amazonaws.com".to_string()]));
    }
    // The token was requested as the account, not with the operator's own rights.
    let token_requests: Vec<_> = cluster
        .audit
        .impersonated_since(mark, OPERATOR_USER, TENANT)
        .into_iter()
        .filter(|e| e.object_ref.as_ref().is_some_and(|o| o.resource == "serviceaccounts" && o.subresource == "token"))
        .collect();
    assert!(!token_requests.is_empty() && token_requests.iter().all(|e| e.code() == 201), "{token_requests:?}");
    // Every S3 request was signed with the issued keys and carried the session token.
    let requests = recorder.requests();
    assert!(requests.len() > 3, "{requests:?}");
    for r in &requests {
        let what = format!("{} {}", r.method, r.path);
        assert_eq!(r.header("x-amz-security-token"), Some(SESSION_TOKEN), "{what}");
        assert!(r.header("authorization").unwrap_or_default().contains(&format!("Credential={}/", s3.access_key)));
    }
    cluster.assert_clean().await;

    // A role whose trust policy refuses the account: STS's own words, never the token.
    let refusing = "arn:aws:iam::111122223333:role/not-for-shop";
    sts.refuse(refusing);
    let annotate = json!({"metadata": {"annotations": {"eks.amazonaws.com/role-arn": refusing}}});
    accounts.patch("berth-backup", &PatchParams::default(), &Patch::Merge(&annotate)).await.unwrap();
    let _: Backup = create(&client, NS, backup("refused-role", None)).await;
    let refused = ended(&backups, "refused-role").await;
    let message = ready_message(&refused);
    assert!(
        message.starts_with("WebIdentityRefused: spec.storage: STS refused AssumeRoleWithWebIdentity"),
        "{message}"
    );
    assert!(message.contains(refusing) && message.contains("AccessDenied: Not authorized"), "{message}");
    let token = sts.calls().last().unwrap()["WebIdentityToken"].clone();
    assert_eq!(sts.calls().last().unwrap()["RoleArn"], refusing);
    assert!(!format!("{:?}", refused.status).contains(&token), "the token is not in the status");
    // The event follows the status.
    let notes = eventually("the Failed event of refused-role", WAIT, || async {
        let events = cluster.events(Some(NS), "Failed").await;
        let notes: Vec<String> = events
            .iter()
            .filter(|e| e.involved_object.name.as_deref() == Some("refused-role"))
            .filter_map(|e| e.message.clone())
            .collect();
        (!notes.is_empty()).then_some(notes)
    })
    .await;
    assert!(notes.iter().all(|n| n.contains("AccessDenied") && !n.contains(&token)), "{notes:?}");

    // An account whose Role does not let it request its own token is told the rule to add.
    cluster.kubectl_apply(
        json!({"apiVersion": "v1", "kind": "List", "items": [
            {"apiVersion": "v1", "kind": "ServiceAccount",
             "metadata": {"name": "no-token", "namespace": NS, "annotations": {"eks.amazonaws.com/role-arn": ROLE_ARN}}},
            {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
             "metadata": {"name": "no-token", "namespace": NS},
             "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "berth-backup"},
             "subjects": [{"kind": "ServiceAccount", "name": "no-token", "namespace": NS}]}
        ]})
        .to_string()
        .as_bytes(),
    );
    let calls_before = sts.calls().len();
    let _: Backup = create(&client, NS, backup("no-token", Some("no-token"))).await;
    let refused = ended(&backups, "no-token").await;
    let message = ready_message(&refused);
    assert!(message.starts_with("Forbidden: spec.storage: ServiceAccount shop/no-token"), "{message}");
    assert!(
        message.contains("resources: [serviceaccounts/token], verbs: [create], resourceNames: [no-token]"),
        "{message}"
    );
    assert_eq!(sts.calls().len(), calls_before, "no STS call without a token");
    assert_eq!(operator.terminate().code(), Some(0));
}
