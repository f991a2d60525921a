//! The agent without a key Secret: the AWS SDK's default credential chain with web identity
//! (`AWS_WEB_IDENTITY_TOKEN_FILE`, `AWS_ROLE_ARN`, as IRSA sets them on a pod) against an STS
//! stand-in on loopback (`AWS_ENDPOINT_URL_STS`) whose temporary keys the S3 server accepts.
//! A recording proxy in front of the S3 server shows the session token on every request.

use crate::agent_support;
use crate::support;

use std::process::Command;

use agent_support::{agent_command, pseudo_random};
use support::s3_recorder::S3Recorder;
use support::servers::S3Server;
use support::sts::{Issued, StsStandIn};

const ROLE_ARN: &str = "arn:aws:iam::111122223333:role/shop-backups";
const TOKEN: &str = "eyJhbGciOiJSUzI1NiJ9.projected-service-account-token.signature";

/// The agent with nothing but web identity to find credentials: no keys, no profile files, no
/// instance metadata.
fn agent(s3: &S3Server, endpoint: &str, home: &std::path::Path, web_identity: &[(&str, String)]) -> Command {
    let mut c = agent_command();
    c.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("HOME", home)
        .env("AWS_CONFIG_FILE", home.join("no-config"))
        .env("AWS_SHARED_CREDENTIALS_FILE", home.join("no-credentials"))
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env("AWS_REGION", &s3.region)
        .env("BERTH_REPOSITORY", "s3://backups/shop")
        .env("BERTH_S3_ENDPOINT", endpoint)
        .env("BERTH_S3_INSECURE_HTTP", "true")
        .env("BERTH_REPOSITORY_KEY", "correct horse battery staple")
        .env("BERTH_PROGRESS", "none")
        .env("BERTH_LOG", "warn")
        .envs(web_identity.iter().map(|(k, v)| (*k, v.as_str())));
    c
}

fn run(mut c: Command, args: &[&str]) -> (bool, String) {
    let o = c.args(args).output().expect("run agent");
    (o.status.success(), format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr)))
}

#[test]
fn backup_with_web_identity_credentials_from_sts() {
    let s3 = S3Server::start();
    s3.create_bucket("backups");
    let recorder = S3Recorder::start(&s3.endpoint);
    // s3s-fs knows one key pair and does not check session tokens: STS hands out that pair
    // with a session token, as AWS STS hands out a temporary pair with one.
    let session_token = "FwoGZXIvYXdzEBYaDstand-in-session-token";
    let sts = StsStandIn::start(Issued {
        access_key_id: s3.access_key.clone(),
        secret_access_key: s3.secret_key.clone(),
        session_token: session_token.into(),
    });
    let home = tempfile::tempdir().unwrap();
    let token_file = home.path().join("token");
    std::fs::write(&token_file, TOKEN).unwrap();
    let web_identity = [
        ("AWS_WEB_IDENTITY_TOKEN_FILE", token_file.to_str().unwrap().to_string()),
        ("AWS_ROLE_ARN", ROLE_ARN.to_string()),
        ("AWS_ROLE_SESSION_NAME", "berth-backup".to_string()),
        ("AWS_ENDPOINT_URL_STS", sts.endpoint.clone()),
    ];

    // Without web identity there are no credentials at all: the agent fails.
    let (ok, out) = run(agent(&s3, &recorder.endpoint, home.path(), &[]), &["init"]);
    assert!(!ok, "{out}");
    assert!(sts.calls().is_empty());

    let (ok, out) = run(agent(&s3, &recorder.endpoint, home.path(), &web_identity), &["init"]);
    assert!(ok, "{out}");
    let src = home.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("data.bin"), pseudo_random(7, 3_000_000)).unwrap();
    let (ok, out) =
        run(agent(&s3, &recorder.endpoint, home.path(), &web_identity), &["backup-dir", src.to_str().unwrap()]);
    assert!(ok, "{out}");
    let restored = home.path().join("restored");
    let (ok, out) = run(
        agent(&s3, &recorder.endpoint, home.path(), &web_identity),
        &["restore", "latest", "--target", restored.to_str().unwrap()],
    );
    assert!(ok, "{out}");
    assert_eq!(std::fs::read(restored.join("data.bin")).unwrap(), std::fs::read(src.join("data.bin")).unwrap());

    // STS saw the token from the file and the role, once per agent run.
    let calls = sts.calls();
    assert_eq!(calls.len(), 3, "{calls:?}");
    for call in &calls {
        assert_eq!(call["Action"], "AssumeRoleWithWebIdentity");
        assert_eq!(call["WebIdentityToken"], TOKEN);
        assert_eq!(call["RoleArn"], ROLE_ARN);
        assert_eq!(call["RoleSessionName"], "berth-backup");
    }
    // Every S3 request was signed with the issued pair and carried its session token.
    let requests = recorder.requests();
    assert!(requests.len() > 5, "{requests:?}");
    for r in &requests {
        let what = format!("{} {}", r.method, r.path);
        assert_eq!(r.header("x-amz-security-token"), Some(session_token), "{what}");
        let auth = r.header("authorization").unwrap_or_default();
        assert!(auth.contains(&format!("Credential={}/", s3.access_key)), "{what}: {auth}");
    }
}
