//! Starts the node's parts from its configuration.

use crate::access::AccessContext;
use crate::config::NodeConfig;
use crate::keys::Keys;
use crate::store::MailStore;
use crate::tunnel::{TunnelClient, TunnelState};
use anyhow::Context;
use omb_shared::transport::quic::QuicConnector;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::sync::watch;
use tokio::task::JoinSet;

pub struct RunningNode {
    pub keys: Arc<Keys>,
    pub store: MailStore,
    pub tunnel_state: watch::Receiver<TunnelState>,
    pub tasks: JoinSet<()>,
    /// Where the mail-access servers listen.
    pub listening: Listening,
}

/// The addresses the mail-access servers are bound to: a port 0 in the
/// configuration becomes the port the system chose, so nothing has to guess a
/// free port ahead of time (and race another program for it).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Listening {
    pub imap: Option<SocketAddr>,
    pub imaps: Option<SocketAddr>,
    pub pop3: Option<SocketAddr>,
    pub pop3s: Option<SocketAddr>,
    pub submission: Option<SocketAddr>,
    pub submissions: Option<SocketAddr>,
}

pub async fn start(config: NodeConfig) -> anyhow::Result<RunningNode> {
    let keys = Arc::new(Keys::load_or_create(&config.data_dir, &config.address)?);
    let store = MailStore::open(&config.data_dir)
        .await
        .context("cannot open the mail store")?;
    let connector = QuicConnector::new(&config.relay.tunnel, &config.relay.pin)
        .context("cannot set up the tunnel")?;
    let (state_tx, state_rx) = watch::channel(TunnelState::Connecting);
    let (control_tx, control_rx) = tokio::sync::mpsc::channel(16);
    let (submit_tx, submit_rx) = tokio::sync::mpsc::channel(64);
    let (account_tx, account_rx) = watch::channel(None);
    let control = crate::control::bind(&config.data_dir).with_context(|| {
        format!(
            "cannot open the control socket in {}",
            config.data_dir.display()
        )
    })?;
    // The servers first: the relay's passthrough streams need their ports.
    let mut tasks = JoinSet::new();
    let access = AccessContext::new(&config, keys.clone(), store.clone())
        .context("cannot set up the mail-access servers")?;
    let [imap, imaps] = crate::imap::spawn(&access, &config.access, &mut tasks).await?;
    let [pop3, pop3s] = crate::pop3::spawn(&access, &config.access, &mut tasks).await?;
    let submission = crate::submission::server(
        &access,
        keys.clone(),
        &config.address,
        account_rx,
        submit_tx,
        &config.access,
    );
    let [submission, submissions] =
        crate::submission::spawn(submission, &config.access, &mut tasks).await?;
    let listening = Listening {
        imap,
        imaps,
        pop3,
        pop3s,
        submission,
        submissions,
    };
    // A passthrough target that names a local server's configured address
    // means that server, wherever it was bound.
    let mut passthrough = config.passthrough.clone();
    if passthrough.imaps.is_some() && passthrough.imaps == config.access.imaps {
        passthrough.imaps = imaps;
    }
    let client = TunnelClient {
        connector,
        keys: keys.clone(),
        store: store.clone(),
        link_token: config.relay.link_token.clone(),
        linked_marker: config.data_dir.join("linked"),
        state: state_tx,
        passthrough: Arc::new(passthrough),
        control: tokio::sync::Mutex::new(control_rx),
        submits: tokio::sync::Mutex::new(submit_rx),
        account: account_tx,
    };
    tasks.spawn(client.run());
    tasks.spawn(crate::control::serve(control, control_tx));
    Ok(RunningNode {
        keys,
        store,
        tunnel_state: state_rx,
        tasks,
        listening,
    })
}
