//! Models by Hugging Face repo id, with no network beyond the loopback: a
//! small HTTP server on 127.0.0.1 serves the tiny fixture model in the Hub's
//! URL scheme (the listing at /api/models/<repo>/revision/main, the files at
//! /<repo>/resolve/main/<path> with the etag, commit and range headers the
//! Hub sends), and can cut a transfer, corrupt one, hide a file or ask for a
//! token. `pnp` downloads into a temporary cache, as a user's first run does.

mod pnp_bin;

use sha1::Sha1;
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("kernels-tests/fixtures")
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// One repo: its commit, its files, and the token it wants (a gated repo).
#[derive(Clone)]
struct Repo {
    commit: String,
    files: BTreeMap<String, Vec<u8>>,
    token: Option<String>,
}

impl Repo {
    /// The files of a folder, with `extra` files added.
    fn from_folder(dir: &Path, commit: &str, extra: &[(&str, &[u8])]) -> Repo {
        let mut files = BTreeMap::new();
        let mut stack = vec![dir.to_path_buf()];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d).expect("fixture folder") {
                let p = e.expect("entry").path();
                if p.is_dir() {
                    stack.push(p);
                } else {
                    let rel = p
                        .strip_prefix(dir)
                        .expect("inside")
                        .to_string_lossy()
                        .replace('\\', "/");
                    files.insert(rel, std::fs::read(&p).expect("fixture file"));
                }
            }
        }
        for (name, bytes) in extra {
            files.insert(name.to_string(), bytes.to_vec());
        }
        Repo {
            commit: commit.into(),
            files,
            token: None,
        }
    }
}

/// The Hub's rule of thumb here: weights go through LFS (their etag and
/// listed hash are SHA-256), the rest are plain git blobs (SHA-1 of
/// "blob <len>\0" and the bytes).
fn is_lfs(name: &str) -> bool {
    name.ends_with(".safetensors") || name.ends_with(".bin")
}

fn sha256(b: &[u8]) -> String {
    hex(&Sha256::digest(b))
}

fn git_sha1(b: &[u8]) -> String {
    let mut d = Sha1::new();
    d.update(format!("blob {}\0", b.len()).as_bytes());
    d.update(b);
    hex(&d.finalize())
}

/// What the server is told to do wrong, each once per listed count.
#[derive(Default)]
struct Faults {
    /// "<repo>/<file>" -> (bytes of body to send before closing, on how
    /// many requests).
    cut: HashMap<String, (usize, usize)>,
    /// "<repo>/<file>"s whose next transfer has one byte flipped.
    corrupt: Vec<String>,
    /// "<repo>/<file>"s the listing names but that answer 404.
    missing: Vec<String>,
    /// "<repo>/<file>" -> how long its body takes to send (in 20 pieces).
    slow: HashMap<String, std::time::Duration>,
}

struct Server {
    url: String,
    repos: Arc<Mutex<HashMap<String, Repo>>>,
    faults: Arc<Mutex<Faults>>,
    /// Every request: "GET <path> [range]".
    log: Arc<Mutex<Vec<String>>>,
}

impl Server {
    fn start() -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind loopback");
        let url = format!("http://{}", listener.local_addr().expect("address"));
        let server = Server {
            url,
            repos: Arc::default(),
            faults: Arc::default(),
            log: Arc::default(),
        };
        let (repos, faults, log) = (
            server.repos.clone(),
            server.faults.clone(),
            server.log.clone(),
        );
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let (repos, faults, log) = (repos.clone(), faults.clone(), log.clone());
                std::thread::spawn(move || serve(stream, &repos, &faults, &log));
            }
        });
        server
    }

    fn add(&self, id: &str, repo: Repo) {
        self.repos.lock().unwrap().insert(id.into(), repo);
    }

    fn take_log(&self) -> Vec<String> {
        std::mem::take(&mut *self.log.lock().unwrap())
    }
}

/// A response's status line and headers.
fn head(status: &str, extra: &[(&str, String)], len: usize) -> String {
    let mut head = format!("HTTP/1.1 {status}\r\nContent-Length: {len}\r\nConnection: close\r\n");
    for (k, v) in extra {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head + "\r\n"
}

fn serve(
    stream: TcpStream,
    repos: &Mutex<HashMap<String, Repo>>,
    faults: &Mutex<Faults>,
    log: &Mutex<Vec<String>>,
) {
    let mut reader = BufReader::new(stream.try_clone().expect("clone stream"));
    let mut line = String::new();
    if reader.read_line(&mut line).is_err() {
        return;
    }
    let path = line.split_whitespace().nth(1).unwrap_or("").to_string();
    let mut headers = HashMap::new();
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h).is_err() || h.trim().is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            headers.insert(k.trim().to_lowercase(), v.trim().to_string());
        }
    }
    let range = headers.get("range").cloned();
    log.lock().unwrap().push(
        format!("GET {path} {}", range.clone().unwrap_or_default())
            .trim()
            .to_string(),
    );
    let mut out = stream;
    let reply = |out: &mut TcpStream, status: &str, extra: &[(&str, String)], body: &[u8]| {
        let _ = out.write_all(head(status, extra, body.len()).as_bytes());
        let _ = out.write_all(body);
    };
    let error = |out: &mut TcpStream, status: &str, code: &str| {
        reply(
            out,
            status,
            &[("X-Error-Code", code.into())],
            format!("{{\"error\":\"{code}\"}}").as_bytes(),
        )
    };
    // /api/models/<org>/<name>/revision/main or /<org>/<name>/resolve/main/<file>
    let (api, rest) = match path
        .split('?')
        .next()
        .unwrap_or("")
        .strip_prefix("/api/models/")
    {
        Some(r) => (true, r.to_string()),
        None => (false, path.trim_start_matches('/').to_string()),
    };
    let parts: Vec<&str> = rest.splitn(5, '/').collect();
    if parts.len() < 4 {
        return error(&mut out, "404 Not Found", "RepoNotFound");
    }
    let id = format!("{}/{}", parts[0], parts[1]);
    let Some(repo) = repos.lock().unwrap().get(&id).cloned() else {
        return error(&mut out, "404 Not Found", "RepoNotFound");
    };
    if let Some(token) = &repo.token {
        match headers.get("authorization") {
            None => return error(&mut out, "401 Unauthorized", "GatedRepo"),
            Some(a) if *a != format!("Bearer {token}") => {
                return error(&mut out, "403 Forbidden", "GatedRepo");
            }
            Some(_) => {}
        }
    }
    if api {
        let siblings: Vec<serde_json::Value> = repo
            .files
            .iter()
            .map(|(name, b)| {
                let mut e = serde_json::json!({"rfilename": name, "size": b.len(), "blobId": git_sha1(b)});
                if is_lfs(name) {
                    e["lfs"] = serde_json::json!({"sha256": sha256(b), "size": b.len(), "pointerSize": 134});
                }
                e
            })
            .collect();
        let body = serde_json::json!({"id": id, "sha": repo.commit, "siblings": siblings});
        return reply(
            &mut out,
            "200 OK",
            &[("Content-Type", "application/json".into())],
            body.to_string().as_bytes(),
        );
    }
    let file = parts.get(4).copied().unwrap_or("");
    let key = format!("{id}/{file}");
    let mut f = faults.lock().unwrap();
    let Some(bytes) = repo.files.get(file).filter(|_| !f.missing.contains(&key)) else {
        return error(&mut out, "404 Not Found", "EntryNotFound");
    };
    let mut body = bytes.clone();
    let total = body.len();
    let (start, end) = match range.as_deref().and_then(|r| r.strip_prefix("bytes=")) {
        Some(r) => {
            let (a, b) = r.split_once('-').unwrap_or((r, ""));
            let a: usize = a.parse().unwrap_or(0);
            let b: usize = b.parse().map(|b: usize| b + 1).unwrap_or(total).min(total);
            (a, b)
        }
        None => (0, total),
    };
    // Not the one-byte probe hf-hub makes before each download.
    if end - start > 1
        && let Some(i) = f.corrupt.iter().position(|c| *c == key)
    {
        f.corrupt.remove(i);
        body[start + (end - start) / 2] ^= 0x55;
    }
    let cut = match f.cut.get_mut(&key) {
        Some((n, left)) if *left > 0 && end - start > 1 => {
            *left -= 1;
            Some(*n)
        }
        _ => None,
    };
    let slow = f.slow.get(&key).copied().filter(|_| end - start > 1);
    drop(f);
    let etag = if is_lfs(file) {
        sha256(bytes)
    } else {
        git_sha1(bytes)
    };
    let mut extra = vec![
        ("X-Repo-Commit", repo.commit.clone()),
        ("Accept-Ranges", "bytes".to_string()),
        ("ETag", format!("\"{}\"", git_sha1(bytes))),
    ];
    if is_lfs(file) {
        extra.push(("X-Linked-Etag", format!("\"{etag}\"")));
        extra.push(("X-Linked-Size", total.to_string()));
    }
    let status = if range.is_some() {
        extra.push((
            "Content-Range",
            format!("bytes {start}-{}/{total}", end - 1),
        ));
        "206 Partial Content"
    } else {
        "200 OK"
    };
    let body = &body[start..end];
    match cut {
        // Announce the whole range, send part of it, close.
        Some(n) => {
            let _ = out.write_all(head(status, &extra, body.len()).as_bytes());
            let _ = out.write_all(&body[..n.min(body.len())]);
            let _ = out.flush();
            let _ = out.shutdown(std::net::Shutdown::Both);
        }
        None => match slow {
            Some(d) => {
                let _ = out.write_all(head(status, &extra, body.len()).as_bytes());
                for piece in body.chunks(body.len().div_ceil(20).max(1)) {
                    std::thread::sleep(d / 20);
                    let _ = out.write_all(piece);
                }
            }
            None => reply(&mut out, status, &extra, body),
        },
    }
}

/// A cache folder and the environment `pnp` runs in: nothing of the
/// developer's own Hugging Face settings.
struct Env {
    dir: PathBuf,
    cache: PathBuf,
    vars: Vec<(String, String)>,
}

impl Env {
    fn new(name: &str, server: &Server) -> Env {
        let dir = std::env::temp_dir().join(format!("pnp-hub-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("temp dir");
        let cache = dir.join("hub");
        let vars = vec![
            ("HOME".into(), dir.to_string_lossy().into_owned()),
            (
                "HF_HOME".into(),
                dir.join("hf").to_string_lossy().into_owned(),
            ),
            ("HF_HUB_CACHE".into(), cache.to_string_lossy().into_owned()),
            ("HF_ENDPOINT".into(), server.url.clone()),
        ];
        Env { dir, cache, vars }
    }

    fn with(&self, k: &str, v: &str) -> Env {
        let mut vars = self.vars.clone();
        vars.retain(|(key, _)| key != k);
        vars.push((k.into(), v.into()));
        Env {
            dir: self.dir.clone(),
            cache: self.cache.clone(),
            vars,
        }
    }

    fn pnp(&self, args: &[&str]) -> (bool, String, String) {
        let out = self.command(args).output().expect("run pnp");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    fn command(&self, args: &[&str]) -> std::process::Command {
        let mut c = pnp_bin::pnp_command();
        // ureq reads proxies from the environment and knows no NO_PROXY:
        // the loopback must be reached directly.
        let proxies = ["ALL_PROXY", "HTTPS_PROXY", "HTTP_PROXY"];
        let proxies = proxies
            .iter()
            .flat_map(|p| [p.to_string(), p.to_lowercase()]);
        let hf = [
            "HF_TOKEN",
            "HF_TOKEN_PATH",
            "HF_HUB_OFFLINE",
            "HF_ENDPOINT",
            "HF_HOME",
            "HF_HUB_CACHE",
        ];
        for k in hf.iter().map(|k| k.to_string()).chain(proxies) {
            c.env_remove(k);
        }
        c.envs(self.vars.iter().map(|(k, v)| (k, v))).args(args);
        c
    }
}

const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";

fn tiny_repo() -> Repo {
    Repo::from_folder(
        &fixtures().join("models/sd15-tiny"),
        COMMIT,
        &[
            // Never fetched: a pickle, a network the run does not use, and
            // the fp16 variant under --precision f32.
            ("unet/diffusion_pytorch_model.bin", b"not to be fetched"),
            ("safety_checker/model.safetensors", b"not to be fetched"),
            (
                "unet/diffusion_pytorch_model.fp16.safetensors",
                b"not to be fetched",
            ),
            ("README.md", b"# tiny"),
        ],
    )
}

/// The tiny model with its UNet weights in two shards and an index, as
/// diffusers writes a large network.
fn sharded_repo() -> Repo {
    let mut repo = Repo::from_folder(&fixtures().join("models/sd15-tiny"), COMMIT, &[]);
    let whole = repo
        .files
        .remove("unet/diffusion_pytorch_model.safetensors")
        .expect("unet");
    let st = safetensors::SafeTensors::deserialize(&whole).expect("fixture safetensors");
    let mut names = st.names();
    names.sort();
    let mut map = serde_json::Map::new();
    for (i, part) in names.chunks(names.len().div_ceil(2)).enumerate() {
        let shard = format!("diffusion_pytorch_model-{:05}-of-00002.safetensors", i + 1);
        let tensors = part
            .iter()
            .map(|n| (n.to_string(), st.tensor(n).expect("tensor")));
        let bytes = safetensors::serialize(tensors, None).expect("serialize");
        repo.files.insert(format!("unet/{shard}"), bytes);
        for n in part {
            map.insert(n.to_string(), shard.clone().into());
        }
    }
    let index = serde_json::json!({"metadata": {"total_size": whole.len()}, "weight_map": map});
    repo.files.insert(
        "unet/diffusion_pytorch_model.safetensors.index.json".into(),
        index.to_string().into_bytes(),
    );
    repo
}

fn info(env: &Env, repo: &str) -> (bool, String, String) {
    env.pnp(&["info", "--model", repo, "--precision", "f32"])
}

fn resolves(log: &[String]) -> Vec<&String> {
    log.iter()
        .filter(|l| l.contains("/resolve/main/"))
        .collect()
}

#[test]
fn a_repo_id_downloads_resumes_refetches_and_then_runs_from_the_cache() {
    let server = Server::start();
    server.add("tiny/sd15", tiny_repo());
    let unet = "unet/diffusion_pytorch_model.safetensors";
    let vae = "vae/diffusion_pytorch_model.safetensors";
    let text = "text_encoder/model.safetensors";
    {
        let mut f = server.faults.lock().unwrap();
        // The unet is cut on every try of the first run (hf-hub's retries
        // come to five tries), which ends it; the next run resumes from what
        // arrived. The vae is cut once, and its retry finishes it.
        f.cut.insert(format!("tiny/sd15/{unet}"), (1 << 20, 5));
        f.cut.insert(format!("tiny/sd15/{vae}"), (1 << 20, 1));
        f.corrupt.push(format!("tiny/sd15/{text}"));
    }
    let env = Env::new("download", &server);
    let (ok, _, stderr) = info(&env, "tiny/sd15");
    assert!(!ok, "cuts on every try should end the first run:\n{stderr}");
    assert!(
        stderr.contains("tiny/sd15/unet/diffusion_pytorch_model.safetensors: the download broke off, and again on each retry")
            && stderr.contains("the next run resumes"),
        "{stderr}"
    );
    let log = server.take_log();
    let unet_ranges: Vec<&String> = log
        .iter()
        .filter(|l| l.contains(unet) && !l.ends_with("bytes=0-0"))
        .collect();
    assert_eq!(unet_ranges.len(), 5, "{log:#?}");
    for (i, l) in unet_ranges.iter().enumerate() {
        assert!(
            l.ends_with(&format!("bytes={}-", i << 20)),
            "request {i} of the unet: {l}"
        );
    }
    assert!(
        stderr.contains("tiny/sd15: fetching 12 files (18.63 MiB) from http://127.0.0.1:"),
        "{stderr}"
    );
    // The corrupted text encoder was refused and fetched again.
    assert!(
        stderr.contains(&format!("tiny/sd15: {text}: SHA-256")),
        "{stderr}"
    );
    assert!(stderr.contains("refused, fetching it again"), "{stderr}");

    // The next run resumes the unet at 5 MiB, fetches the vae (resuming it
    // within the run after its cut) and loads the model.
    let (ok, stdout, stderr) = info(&env, "tiny/sd15");
    assert!(ok, "{stderr}");
    assert!(stdout.contains("architecture:"), "{stdout}");
    let log = server.take_log();
    let got: Vec<&str> = resolves(&log)
        .into_iter()
        .filter(|l| !l.ends_with("bytes=0-0"))
        .map(|l| l.trim_start_matches("GET /tiny/sd15/resolve/main/"))
        .collect();
    assert_eq!(
        got,
        [
            format!("{unet} bytes={}-", 5 << 20),
            "vae/config.json bytes=0-".to_string(),
            format!("{vae} bytes=0-"),
            format!("{vae} bytes={}-", 1 << 20),
        ],
        "{log:#?}"
    );
    for never in [
        "diffusion_pytorch_model.bin",
        "safety_checker",
        "fp16",
        "README.md",
    ] {
        assert!(
            !log.iter().any(|l| l.contains(never)),
            "{never} was requested: {log:#?}"
        );
    }

    // The cache's tree is the Hub's: refs/main, blobs named by their hash,
    // snapshot links to them, every file as the fixture has it.
    let root = env.cache.join("models--tiny--sd15");
    assert_eq!(
        std::fs::read_to_string(root.join("refs/main"))
            .unwrap()
            .trim(),
        COMMIT
    );
    let snapshot = root.join("snapshots").join(COMMIT);
    let repo = tiny_repo();
    let mut fetched = 0;
    for (name, bytes) in &repo.files {
        let link = snapshot.join(name);
        let wanted = !(name.ends_with(".bin")
            || name.contains("safety")
            || name.contains("fp16")
            || name == "README.md");
        assert_eq!(link.exists(), wanted, "{name}");
        if !wanted {
            continue;
        }
        fetched += 1;
        assert!(
            link.symlink_metadata().unwrap().file_type().is_symlink(),
            "{name}"
        );
        let blob = std::fs::canonicalize(&link).unwrap();
        let hash = if is_lfs(name) {
            sha256(bytes)
        } else {
            git_sha1(bytes)
        };
        assert_eq!(
            blob,
            std::fs::canonicalize(root.join("blobs").join(&hash)).unwrap(),
            "{name}"
        );
        assert!(
            std::fs::read(&blob).unwrap() == *bytes,
            "{name} differs from the fixture"
        );
    }
    assert_eq!(fetched, 12);
    let parts: Vec<_> = std::fs::read_dir(root.join("blobs"))
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.file_name()))
        .filter(|n| n.to_string_lossy().contains('.'))
        .collect();
    assert!(parts.is_empty(), "partial or lock files left: {parts:?}");

    // Again: the listing only, nothing downloaded.
    let (ok, _, stderr) = info(&env, "tiny/sd15");
    assert!(ok, "{stderr}");
    assert!(stderr.contains("tiny/sd15: all 12 files"), "{stderr}");
    assert!(resolves(&server.take_log()).is_empty());

    // A truncated blob in the cache is fetched again.
    let unet_blob = std::fs::canonicalize(snapshot.join(unet)).unwrap();
    let len = std::fs::metadata(&unet_blob).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&unet_blob)
        .unwrap()
        .set_len(len / 2)
        .unwrap();
    let (ok, _, stderr) = info(&env, "tiny/sd15");
    assert!(ok, "{stderr}");
    assert!(
        stderr.contains("tiny/sd15: downloaded 1 of 12 files"),
        "{stderr}"
    );
    assert_eq!(std::fs::metadata(&unet_blob).unwrap().len(), len);
    server.take_log();

    // Offline, from the flag or the environment: the server (still up) sees
    // no request at all.
    let (ok, _, stderr) = env.pnp(&[
        "info",
        "--model",
        "tiny/sd15",
        "--precision",
        "f32",
        "--offline",
    ]);
    assert!(ok, "{stderr}");
    let (ok, _, stderr) = info(&env.with("HF_HUB_OFFLINE", "1"), "tiny/sd15");
    assert!(ok, "{stderr}");
    assert!(server.take_log().is_empty());
    // Offline with a file missing from the snapshot: the error names it;
    // online, the file is fetched again.
    std::fs::remove_file(snapshot.join("vae/config.json")).unwrap();
    let (ok, _, stderr) = info(&env.with("HF_HUB_OFFLINE", "1"), "tiny/sd15");
    assert!(!ok);
    assert!(
        stderr.contains("offline (--offline or HF_HUB_OFFLINE): tiny/sd15: vae/config.json is missing in the cached snapshot"),
        "{stderr}"
    );
    assert!(server.take_log().is_empty());
    let (ok, _, stderr) = info(&env, "tiny/sd15");
    assert!(ok, "{stderr}");
    assert!(
        stderr.contains("tiny/sd15: downloaded 1 of 12 files"),
        "{stderr}"
    );
    server.take_log();
    let gone = env.with("HF_ENDPOINT", "http://127.0.0.1:9");
    // Without offline mode an unreachable Hub falls back to the cache, saying so.
    let (ok, _, stderr) = info(&gone, "tiny/sd15");
    assert!(ok, "{stderr}");
    assert!(
        stderr.contains("could not reach http://127.0.0.1:9")
            && stderr.contains("using the cached snapshot"),
        "{stderr}"
    );

    // A translation from the downloaded copy is the fixture folder's, bit for bit.
    let image = fixtures().join("pnp/square.png");
    let latents = |model: &str, name: &str| {
        let out = env.dir.join(format!("{name}.png"));
        let lat = env.dir.join(format!("{name}.safetensors"));
        let (ok, _, stderr) = env.pnp(&[
            "translate",
            "--model",
            model,
            "--precision",
            "f32",
            "--image",
            image.to_str().unwrap(),
            "--prompt",
            "a photo of a cat",
            "--steps",
            "3",
            "--inversion-steps",
            "3",
            "--width",
            "64",
            "--out",
            out.to_str().unwrap(),
            "--latents-out",
            lat.to_str().unwrap(),
        ]);
        assert!(ok, "{stderr}");
        let bytes = std::fs::read(&lat).unwrap();
        let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        st.tensor("final").unwrap().data().to_vec()
    };
    let folder = fixtures().join("models/sd15-tiny");
    assert_eq!(
        latents("tiny/sd15", "hub"),
        latents(folder.to_str().unwrap(), "folder")
    );
    // A network in shards: its index, then the shards the index names.
    server.add("tiny/sharded", sharded_repo());
    let (ok, _, stderr) = info(&env, "tiny/sharded");
    assert!(ok, "{stderr}");
    let log = server.take_log();
    let unet: Vec<&str> = resolves(&log)
        .into_iter()
        .filter(|l| l.contains("/unet/") && !l.ends_with("bytes=0-0"))
        .map(|l| l.trim_start_matches("GET /tiny/sharded/resolve/main/unet/"))
        .collect();
    assert_eq!(
        unet,
        [
            "config.json bytes=0-",
            "diffusion_pytorch_model.safetensors.index.json bytes=0-",
            "diffusion_pytorch_model-00001-of-00002.safetensors bytes=0-",
            "diffusion_pytorch_model-00002-of-00002.safetensors bytes=0-",
        ]
    );
    assert!(
        stderr.contains("tiny/sharded: downloaded 14 of 14 files"),
        "{stderr}"
    );
    let _ = std::fs::remove_dir_all(&env.dir);
}

#[test]
fn offline_misses_refusals_and_gated_repos_say_what_to_do() {
    let server = Server::start();
    server.add("tiny/sd15", tiny_repo());
    let mut gated = tiny_repo();
    gated.token = Some("hf_pnp_test".into());
    server.add("tiny/gated", gated);
    server.add("tiny/holed", tiny_repo());
    server
        .faults
        .lock()
        .unwrap()
        .missing
        .push("tiny/holed/vae/config.json".into());
    let env = Env::new("refusals", &server);

    let (ok, _, stderr) = env.pnp(&["info", "--model", "tiny/sd15", "--offline"]);
    assert!(!ok);
    assert!(
        stderr.contains(
            "offline (--offline or HF_HUB_OFFLINE): tiny/sd15 is not in the Hugging Face cache"
        ) && stderr.contains("run once without offline mode"),
        "{stderr}"
    );
    let (ok, _, stderr) = info(&env, "tiny/nope");
    assert!(!ok);
    assert!(
        stderr.contains("tiny/nope: no such model repo on http://127.0.0.1"),
        "{stderr}"
    );
    let (ok, _, stderr) = info(&env, "tiny/holed");
    assert!(!ok);
    assert!(
        stderr.contains("tiny/holed: the repo has no file vae/config.json (HTTP 404"),
        "{stderr}"
    );
    let (ok, _, stderr) = info(&env.with("HF_ENDPOINT", "http://127.0.0.1:9"), "tiny/sd15");
    assert!(!ok);
    assert!(
        stderr.contains("could not reach http://127.0.0.1:9 to download tiny/sd15"),
        "{stderr}"
    );
    assert!(server.take_log().iter().all(|l| !l.contains("tiny/sd15")));

    // Gated: no token, a token without access, then the right one (from
    // HF_TOKEN, and from the file `huggingface-cli login` writes).
    let (ok, _, stderr) = info(&env, "tiny/gated");
    assert!(!ok);
    assert!(
        stderr.contains("tiny/gated is gated or private (HTTP 401)")
            && stderr.contains("HF_TOKEN=hf_..."),
        "{stderr}"
    );
    let (ok, _, stderr) = info(&env.with("HF_TOKEN", "hf_other"), "tiny/gated");
    assert!(!ok);
    assert!(
        stderr.contains("tiny/gated is gated (HTTP 403): the token's account has no access"),
        "{stderr}"
    );
    let (ok, _, stderr) = info(&env.with("HF_TOKEN", "hf_pnp_test"), "tiny/gated");
    assert!(ok, "{stderr}");
    assert!(
        stderr.contains("tiny/gated: downloaded 12 of 12 files"),
        "{stderr}"
    );
    std::fs::create_dir_all(env.dir.join("hf")).unwrap();
    std::fs::write(env.dir.join("hf/token"), "hf_pnp_test\n").unwrap();
    let (ok, _, stderr) = info(&env, "tiny/gated");
    assert!(ok, "{stderr}");
    assert!(stderr.contains("tiny/gated: all 12 files"), "{stderr}");
    let _ = std::fs::remove_dir_all(&env.dir);
}

/// Two processes fetching one model at once (`batch --shard` started
/// twice) take turns on each file: every file crosses the network once, and
/// both load the model.
#[test]
fn two_processes_fetching_one_model_take_turns() {
    let server = Server::start();
    server.add("tiny/sd15", tiny_repo());
    let unet = "tiny/sd15/unet/diffusion_pytorch_model.safetensors";
    let slow = std::time::Duration::from_secs(4);
    server.faults.lock().unwrap().slow.insert(unet.into(), slow);
    let env = Env::new("turns", &server);
    let start = || {
        env.command(&["info", "--model", "tiny/sd15", "--precision", "f32"])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("start pnp")
    };
    let (a, b) = (start(), start());
    let mut waited = 0;
    for p in [a, b] {
        let out = p.wait_with_output().expect("pnp");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{stderr}");
        waited += stderr
            .contains("is downloading tiny/sd15/unet/diffusion_pytorch_model.safetensors")
            as usize;
    }
    assert_eq!(
        waited, 1,
        "one process should have waited for the other's unet"
    );
    let log = server.take_log();
    let mut fetched: Vec<&str> = resolves(&log)
        .into_iter()
        .filter(|l| !l.ends_with("bytes=0-0"))
        .map(|l| l.as_str())
        .collect();
    fetched.sort();
    let n = fetched.len();
    fetched.dedup();
    assert_eq!((n, fetched.len()), (12, 12), "each file once: {log:#?}");
    let _ = std::fs::remove_dir_all(&env.dir);
}
