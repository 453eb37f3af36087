//! Copies bytes both ways between two connections (SNI passthrough on the
//! relay and on the node), counting them, with half-close passed on.

use std::io;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Read buffer of each direction.
const BUF: usize = 16 * 1024;

/// What [`splice`] moved, and how it ended.
#[derive(Debug)]
pub struct Spliced {
    /// Bytes read from `a` and written to `b`.
    pub a_to_b: u64,
    /// Bytes read from `b` and written to `a`.
    pub b_to_a: u64,
    /// The error that ended it, if one did (a reset, a write to a closed peer).
    pub error: Option<io::Error>,
}

/// Copies `a_read → b_write` and `b_read → a_write` until both directions have
/// ended. A direction ends when its reader reaches end of stream: the end is
/// passed on by shutting down the other writer (half-close), and the other
/// direction goes on. An error in either direction ends both at once.
pub async fn splice<AR, AW, BR, BW>(a_read: AR, a_write: AW, b_read: BR, b_write: BW) -> Spliced
where
    AR: AsyncRead + Unpin,
    AW: AsyncWrite + Unpin,
    BR: AsyncRead + Unpin,
    BW: AsyncWrite + Unpin,
{
    let (mut a_to_b, mut b_to_a) = (0, 0);
    let error = {
        let up = pipe(a_read, b_write, &mut a_to_b);
        let down = pipe(b_read, a_write, &mut b_to_a);
        tokio::pin!(up, down);
        let (mut up_done, mut down_done) = (false, false);
        loop {
            tokio::select! {
                r = &mut up, if !up_done => match r {
                    Ok(()) => up_done = true,
                    Err(e) => break Some(e),
                },
                r = &mut down, if !down_done => match r {
                    Ok(()) => down_done = true,
                    Err(e) => break Some(e),
                },
            }
            if up_done && down_done {
                break None;
            }
        }
    };
    Spliced {
        a_to_b,
        b_to_a,
        error,
    }
}

async fn pipe<R, W>(mut r: R, mut w: W, count: &mut u64) -> io::Result<()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buf = vec![0u8; BUF];
    loop {
        let n = r.read(&mut buf).await?;
        if n == 0 {
            return w.shutdown().await;
        }
        w.write_all(&buf[..n]).await?;
        w.flush().await?;
        *count += n as u64;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::duplex;

    #[tokio::test]
    async fn half_close_is_passed_on_and_the_other_way_goes_on() {
        // client <-> (c1|c2) splice (n1|n2) <-> server
        let (mut client, c2) = duplex(64);
        let (n1, mut server) = duplex(64);
        let (c_r, c_w) = tokio::io::split(c2);
        let (n_r, n_w) = tokio::io::split(n1);
        let task = tokio::spawn(splice(c_r, c_w, n_r, n_w));

        client.write_all(b"request").await.unwrap();
        client.shutdown().await.unwrap();
        let mut got = Vec::new();
        server.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"request", "the client's end reached the server");

        // The server answers after the client's half-close.
        let answer = vec![7u8; 100_000];
        let answering = async {
            server.write_all(&answer).await.unwrap();
            server.shutdown().await.unwrap();
        };
        let mut got = Vec::new();
        tokio::join!(answering, async {
            client.read_to_end(&mut got).await.unwrap();
        });
        assert_eq!(got, answer);

        let done = task.await.unwrap();
        assert_eq!((done.a_to_b, done.b_to_a), (7, 100_000));
        assert!(done.error.is_none());
    }

    /// A writer whose peer has gone.
    struct Gone;

    impl AsyncWrite for Gone {
        fn poll_write(
            self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
            _: &[u8],
        ) -> std::task::Poll<io::Result<usize>> {
            std::task::Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()))
        }
        fn poll_flush(
            self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<io::Result<()>> {
            std::task::Poll::Ready(Ok(()))
        }
        fn poll_shutdown(
            self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<io::Result<()>> {
            std::task::Poll::Ready(Ok(()))
        }
    }

    #[tokio::test]
    async fn an_error_ends_both_directions() {
        // The client side is silent but open (its reading direction would wait
        // for ever); writing to it fails: the splice ends all the same.
        let (_client, silent) = duplex(64);
        let (mut server, n1) = duplex(64);
        let (n_r, n_w) = tokio::io::split(n1);
        let task = tokio::spawn(splice(silent, Gone, n_r, n_w));
        server.write_all(b"answer").await.unwrap();
        let done = tokio::time::timeout(std::time::Duration::from_secs(5), task)
            .await
            .expect("the splice ends")
            .unwrap();
        assert_eq!(
            done.error.map(|e| e.kind()),
            Some(io::ErrorKind::BrokenPipe)
        );
        assert_eq!((done.a_to_b, done.b_to_a), (0, 0));
    }
}
