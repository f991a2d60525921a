//! A stand-in for AWS STS on loopback that answers `AssumeRoleWithWebIdentity` (the call the
//! AWS SDK's default credential chain makes with `AWS_WEB_IDENTITY_TOKEN_FILE` and
//! `AWS_ROLE_ARN`, as under IRSA) with fixed temporary credentials in STS's XML format, and
//! records the parameters of every call. Any other action is answered with an STS error, and so
//! is a role [`StsStandIn::refuse`] named (`AccessDenied`, as a trust policy that does not allow
//! the token's subject).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::http::{Response, StatusCode, Uri};

/// The temporary credentials the stand-in issues.
#[derive(Clone, Debug)]
pub struct Issued {
    pub access_key_id: String,
    pub secret_access_key: String,
    pub session_token: String,
}

pub struct StsStandIn {
    /// `http://127.0.0.1:<port>`, for `AWS_ENDPOINT_URL_STS`.
    pub endpoint: String,
    calls: Arc<Mutex<Vec<BTreeMap<String, String>>>>,
    refused: Arc<Mutex<Vec<String>>>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl StsStandIn {
    pub fn start(issued: Issued) -> Self {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.set_nonblocking(true).expect("nonblocking");
        let endpoint = format!("http://{}", listener.local_addr().expect("addr"));
        let calls = Arc::new(Mutex::new(Vec::new()));
        let refused = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let (recorded, refusing) = (calls.clone(), refused.clone());
        let thread = std::thread::Builder::new()
            .name("sts-stand-in".into())
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
                rt.block_on(async move {
                    let app = axum::Router::new().fallback(move |uri: Uri, body: Bytes| {
                        let (issued, recorded, refusing) = (issued.clone(), recorded.clone(), refusing.clone());
                        async move { answer(&issued, &recorded, &refusing, &uri, &body) }
                    });
                    let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
                    let _ = axum::serve(listener, app)
                        .with_graceful_shutdown(async {
                            let _ = rx.await;
                        })
                        .await;
                });
            })
            .expect("spawn sts thread");
        Self { endpoint, calls, refused, shutdown: Some(tx), thread: Some(thread) }
    }

    /// From now on, answers AssumeRoleWithWebIdentity of `role` with AccessDenied.
    pub fn refuse(&self, role: &str) {
        self.refused.lock().unwrap().push(role.to_string());
    }

    /// The parameters (query and form body) of every call so far.
    pub fn calls(&self) -> Vec<BTreeMap<String, String>> {
        self.calls.lock().unwrap().clone()
    }
}

impl Drop for StsStandIn {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn answer(
    issued: &Issued,
    recorded: &Mutex<Vec<BTreeMap<String, String>>>,
    refused: &Mutex<Vec<String>>,
    uri: &Uri,
    body: &[u8],
) -> Response<String> {
    let mut params: BTreeMap<String, String> = form_urlencoded::parse(uri.query().unwrap_or("").as_bytes())
        .chain(form_urlencoded::parse(body))
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    recorded.lock().unwrap().push(params.clone());
    let xml = |status: StatusCode, body: String| {
        Response::builder().status(status).header("content-type", "text/xml").body(body).unwrap()
    };
    if params.get("Action").map(String::as_str) != Some("AssumeRoleWithWebIdentity") {
        return xml(
            StatusCode::BAD_REQUEST,
            r#"<ErrorResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/"><Error><Type>Sender</Type><Code>InvalidAction</Code><Message>only AssumeRoleWithWebIdentity is served here</Message></Error><RequestId>stand-in</RequestId></ErrorResponse>"#.into(),
        );
    }
    let session = params.remove("RoleSessionName").unwrap_or_default();
    let role = params.remove("RoleArn").unwrap_or_default();
    if refused.lock().unwrap().contains(&role) {
        return xml(
            StatusCode::FORBIDDEN,
            r#"<ErrorResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/"><Error><Type>Sender</Type><Code>AccessDenied</Code><Message>Not authorized to perform sts:AssumeRoleWithWebIdentity</Message></Error><RequestId>stand-in</RequestId></ErrorResponse>"#.into(),
        );
    }
    xml(
        StatusCode::OK,
        format!(
            r#"<AssumeRoleWithWebIdentityResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/">
  <AssumeRoleWithWebIdentityResult>
    <SubjectFromWebIdentityToken>system:serviceaccount:shop:backup</SubjectFromWebIdentityToken>
    <Audience>sts.amazonaws.com</Audience>
    <AssumedRoleUser>
      <Arn>{role}/{session}</Arn>
      <AssumedRoleId>AROASTANDIN:{session}</AssumedRoleId>
    </AssumedRoleUser>
    <Credentials>
      <AccessKeyId>{}</AccessKeyId>
      <SecretAccessKey>{}</SecretAccessKey>
      <SessionToken>{}</SessionToken>
      <Expiration>2099-01-01T00:00:00Z</Expiration>
    </Credentials>
    <Provider>stand-in</Provider>
  </AssumeRoleWithWebIdentityResult>
  <ResponseMetadata><RequestId>stand-in-1</RequestId></ResponseMetadata>
</AssumeRoleWithWebIdentityResponse>"#,
            issued.access_key_id, issued.secret_access_key, issued.session_token
        ),
    )
}
