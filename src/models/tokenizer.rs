//! CLIP's BPE tokenizer, matching transformers' `CLIPTokenizer` id for id.
//!
//! Built with the `tokenizers` crate from a diffusers `tokenizer/` folder:
//! `tokenizer.json` when the folder has one, otherwise `vocab.json` +
//! `merges.txt` assembled the way transformers' `CLIPConverter`
//! (convert_slow_tokenizer.py) does. Prompts become exactly `max_len` ids:
//! BOS, the prompt's tokens, EOS, then the pad id ("max_length" padding),
//! truncated with BOS and EOS kept.
//!
//! SD2 quirk (docs/ALGORITHM.md, "Text encoding"): SD2's pad token "!" is registered as a
//! special added token, so every "!" in a prompt becomes its own id before
//! BPE ("detailed!!" -> "detailed</w>", "!", "!"). We register the pad token
//! the same way whenever it is not the BOS or EOS token.

use std::path::{Path, PathBuf};

use serde_json::Value;
use tokenizers::models::bpe::{BPE, Merges, Vocab};
use tokenizers::normalizers::replace::ReplacePattern;
use tokenizers::normalizers::{Lowercase, NFC, Replace, Sequence as NormSeq};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::sequence::Sequence as PreSeq;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::{AddedToken, SplitDelimiterBehavior, Tokenizer};

/// The context length of every CLIP text encoder SD uses.
pub const CLIP_MAX_LEN: usize = 77;

/// CLIP's word split (openai/CLIP simple_tokenizer.py, without the special
/// tokens, which the added vocabulary handles).
const CLIP_PATTERN: &str = r"'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+";

#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    #[error(
        "tokenizer folder {0} does not exist; pass the model's `tokenizer/` folder \
         (it holds vocab.json and merges.txt, or tokenizer.json)"
    )]
    NoFolder(PathBuf),
    #[error(
        "{dir} has no tokenizer: expected tokenizer.json, or vocab.json and merges.txt \
         ({missing} is missing); copy them from the model's `tokenizer/` folder"
    )]
    MissingFile { dir: PathBuf, missing: String },
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "{path} is not a valid tokenizer file ({msg}); fetch the model's tokenizer files again"
    )]
    Invalid { path: PathBuf, msg: String },
    #[error(
        "{dir}: the {role} token {token:?} is not in the vocabulary; check special_tokens_map.json"
    )]
    UnknownSpecial {
        dir: PathBuf,
        role: &'static str,
        token: String,
    },
    #[error("cannot tokenize {prompt:?}: {msg}")]
    Encode { prompt: String, msg: String },
}

/// A prompt as token ids.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Encoded {
    /// Exactly [`ClipTokenizer::max_len`] ids (77 for every SD model).
    pub ids: Vec<u32>,
    /// How many of the prompt's tokens did not fit and were dropped.
    pub truncated: usize,
    /// The dropped tokens as text (empty when nothing was dropped).
    pub dropped: String,
}

impl Encoded {
    /// The warning to print when the prompt was cut, or None.
    pub fn warning(&self) -> Option<String> {
        if self.truncated == 0 {
            return None;
        }
        let n = self.ids.len();
        // The first dropped words say where the cut fell; a long paste
        // need not be printed back whole.
        const QUOTED: usize = 8;
        let words: Vec<&str> = self.dropped.split_whitespace().collect();
        let quoted = words[..words.len().min(QUOTED)].join(" ");
        let more = match words.len().saturating_sub(QUOTED) {
            0 => String::new(),
            k => format!(" and {k} more word(s)"),
        };
        Some(format!(
            "prompt is {} tokens (with the start and end tokens); the model reads {n}, so the last {} were dropped, from {quoted:?}{more}",
            n + self.truncated,
            self.truncated,
        ))
    }
}

/// Reads one file of a tokenizer folder by name; `Ok(None)`: not there.
pub type TokenizerFiles<'a> = dyn Fn(&str) -> Result<Option<String>, TokenizerError> + 'a;

pub struct ClipTokenizer {
    tokenizer: Tokenizer,
    bos: u32,
    eos: u32,
    pad: u32,
    max_len: usize,
}

impl ClipTokenizer {
    /// Loads the tokenizer of a diffusers `tokenizer/` folder.
    pub fn from_dir(dir: &Path) -> Result<Self, TokenizerError> {
        if !dir.is_dir() {
            return Err(TokenizerError::NoFolder(dir.to_path_buf()));
        }
        Self::from_files(dir, &|name| {
            let path = dir.join(name);
            if path.is_file() {
                read_text(&path).map(Some)
            } else {
                Ok(None)
            }
        })
    }

    /// Loads a tokenizer from the files of a `tokenizer/` folder as `read`
    /// returns them by name (None: absent), wherever they live (a browser's
    /// file inputs, say). `dir` only names the folder in messages.
    pub fn from_files(dir: &Path, read: &TokenizerFiles<'_>) -> Result<Self, TokenizerError> {
        let json_opt = |name: &str| -> Result<Option<Value>, TokenizerError> {
            let Some(text) = read(name)? else {
                return Ok(None);
            };
            serde_json::from_str(&text)
                .map(Some)
                .map_err(|e| TokenizerError::Invalid {
                    path: dir.join(name),
                    msg: format!("not JSON: {e}"),
                })
        };
        let config = json_opt("tokenizer_config.json")?;
        let special_map = json_opt("special_tokens_map.json")?;
        // transformers lets special_tokens_map.json override tokenizer_config.json.
        let special = |role: &str, default: &str| {
            [&special_map, &config]
                .into_iter()
                .flatten()
                .find_map(|v| token_content(v.get(role)?))
                .unwrap_or_else(|| default.to_string())
        };
        let bos_tok = special("bos_token", "<|startoftext|>");
        let eos_tok = special("eos_token", "<|endoftext|>");
        let pad_tok = special("pad_token", "<|endoftext|>");
        let unk_tok = special("unk_token", "<|endoftext|>");

        let json = dir.join("tokenizer.json");
        let mut tokenizer = match read("tokenizer.json")? {
            Some(text) => text
                .parse::<Tokenizer>()
                .map_err(|e| TokenizerError::Invalid {
                    path: json.clone(),
                    msg: e.to_string(),
                })?,
            None => build_clip_bpe(dir, read, &unk_tok)?,
        };
        // BOS/EOS, truncation and padding are applied in `encode`, not by a
        // tokenizer.json's own settings.
        tokenizer.with_padding(None);
        tokenizer
            .with_truncation(None)
            .map_err(|e| TokenizerError::Invalid {
                path: json.clone(),
                msg: e.to_string(),
            })?;
        // Registering the specials makes the added vocabulary split them out of a
        // prompt before normalization, as transformers does; for SD2 this is the
        // "!" quirk. Tokens already in the vocabulary keep their ids.
        let mut specials = vec![bos_tok.clone(), eos_tok.clone(), unk_tok];
        if pad_tok != bos_tok && pad_tok != eos_tok {
            specials.push(pad_tok.clone());
        }
        tokenizer
            .add_special_tokens(specials.into_iter().map(|t| AddedToken::from(t, true)))
            .map_err(|e| TokenizerError::Invalid {
                path: dir.to_path_buf(),
                msg: format!("cannot register the special tokens: {e}"),
            })?;

        let id = |role: &'static str, token: &str| {
            tokenizer
                .token_to_id(token)
                .ok_or_else(|| TokenizerError::UnknownSpecial {
                    dir: dir.to_path_buf(),
                    role,
                    token: token.to_string(),
                })
        };
        let (bos, eos, pad) = (
            id("bos", &bos_tok)?,
            id("eos", &eos_tok)?,
            id("pad", &pad_tok)?,
        );
        // Configs often carry a huge sentinel (1e30) for "no limit": CLIP reads 77.
        let max_len = config
            .as_ref()
            .and_then(|c| c.get("model_max_length")?.as_f64())
            .filter(|&m| (2.0..=CLIP_MAX_LEN as f64).contains(&m) && m.fract() == 0.0)
            .map_or(CLIP_MAX_LEN, |m| m as usize);
        Ok(ClipTokenizer {
            tokenizer,
            bos,
            eos,
            pad,
            max_len,
        })
    }

    /// Token ids per prompt (77 for every SD model).
    pub fn max_len(&self) -> usize {
        self.max_len
    }

    pub fn pad_id(&self) -> u32 {
        self.pad
    }

    pub fn eos_id(&self) -> u32 {
        self.eos
    }

    /// BOS + tokens + EOS, truncated to `max_len` (BOS and EOS kept) and
    /// padded with the pad id: transformers' `padding="max_length",
    /// truncation=True`.
    pub fn encode(&self, prompt: &str) -> Result<Encoded, TokenizerError> {
        let enc = self
            .tokenizer
            .encode(prompt, false)
            .map_err(|e| TokenizerError::Encode {
                prompt: prompt.to_string(),
                msg: e.to_string(),
            })?;
        let tokens = enc.get_ids();
        let room = self.max_len - 2;
        let kept = &tokens[..tokens.len().min(room)];
        let dropped_ids = &tokens[kept.len()..];
        let mut ids = Vec::with_capacity(self.max_len);
        ids.push(self.bos);
        ids.extend_from_slice(kept);
        ids.push(self.eos);
        ids.resize(self.max_len, self.pad);
        Ok(Encoded {
            ids,
            truncated: dropped_ids.len(),
            dropped: self.decode(dropped_ids),
        })
    }

    /// Token ids back to text, for messages ("</w>" marks a word's end).
    pub fn decode(&self, ids: &[u32]) -> String {
        let pieces: Vec<String> = ids
            .iter()
            .filter_map(|&i| self.tokenizer.id_to_token(i))
            .collect();
        let text = byte_level_decode(&pieces.concat());
        text.replace("</w>", " ").trim().to_string()
    }
}

/// transformers' CLIPConverter: BPE with the "</w>" word-end suffix; NFC,
/// whitespace runs to one space, lowercase; CLIP's word regex (keeping the
/// matches, dropping the whitespace between them), then byte-level mapping.
fn build_clip_bpe(
    dir: &Path,
    read: &TokenizerFiles<'_>,
    unk: &str,
) -> Result<Tokenizer, TokenizerError> {
    let (vocab_path, merges_path) = (dir.join("vocab.json"), dir.join("merges.txt"));
    let required = |name: &str| {
        read(name)?.ok_or_else(|| TokenizerError::MissingFile {
            dir: dir.to_path_buf(),
            missing: name.to_string(),
        })
    };
    let (vocab_text, merges_text) = (required("vocab.json")?, required("merges.txt")?);
    let invalid = |path: &Path, msg: String| TokenizerError::Invalid {
        path: path.to_path_buf(),
        msg,
    };
    let vocab_json: Value = serde_json::from_str(&vocab_text)
        .map_err(|e| invalid(&vocab_path, format!("not JSON: {e}")))?;
    let obj = vocab_json
        .as_object()
        .ok_or_else(|| invalid(&vocab_path, "expected a JSON object of token -> id".into()))?;
    let mut vocab = Vocab::default();
    for (tok, id) in obj {
        let id = id
            .as_u64()
            .and_then(|i| u32::try_from(i).ok())
            .ok_or_else(|| {
                invalid(
                    &vocab_path,
                    format!("token {tok:?} has id {id}, expected an integer"),
                )
            })?;
        vocab.insert(tok.clone(), id);
    }
    if vocab.is_empty() {
        return Err(invalid(&vocab_path, "holds no tokens".into()));
    }
    let mut merges = Merges::new();
    for (n, line) in merges_text.lines().enumerate() {
        if line.starts_with("#version") || line.trim().is_empty() {
            continue;
        }
        let mut parts = line.split(' ');
        match (parts.next(), parts.next(), parts.next()) {
            (Some(a), Some(b), None) => merges.push((a.to_string(), b.to_string())),
            _ => {
                return Err(invalid(
                    &merges_path,
                    format!(
                        "line {} is {line:?}, expected two tokens separated by one space",
                        n + 1
                    ),
                ));
            }
        }
    }
    if merges.is_empty() {
        return Err(invalid(
            &merges_path,
            "holds no merges (a CLIP tokenizer has about 49,000)".into(),
        ));
    }
    let bpe = BPE::builder()
        .vocab_and_merges(vocab, merges)
        .end_of_word_suffix("</w>".into())
        .continuing_subword_prefix(String::new())
        .unk_token(unk.to_string())
        .fuse_unk(false)
        .build()
        .map_err(|e| invalid(dir, format!("vocab.json and merges.txt do not agree: {e}")))?;

    let mut tokenizer = Tokenizer::new(bpe);
    let ws = Replace::new(ReplacePattern::Regex(r"\s+".into()), " ")
        .map_err(|e| invalid(dir, e.to_string()))?;
    let normalizer = NormSeq::new(vec![NFC.into(), ws.into(), Lowercase.into()]);
    tokenizer
        .with_normalizer(Some(normalizer))
        .map_err(|e| invalid(dir, e.to_string()))?;
    let split = Split::new(
        SplitPattern::Regex(CLIP_PATTERN.into()),
        SplitDelimiterBehavior::Removed,
        true,
    )
    .map_err(|e| invalid(dir, e.to_string()))?;
    let byte_level = ByteLevel::new(false, false, false);
    tokenizer.with_pre_tokenizer(Some(PreSeq::new(vec![split.into(), byte_level.into()])));
    Ok(tokenizer)
}

/// GPT-2's byte <-> printable-character table, inverted: the token text
/// back to its UTF-8 bytes (openai/CLIP simple_tokenizer.py bytes_to_unicode).
fn byte_level_decode(text: &str) -> String {
    let printable = |b: u32| {
        (0x21..=0x7e).contains(&b) || (0xa1..=0xac).contains(&b) || (0xae..=0xff).contains(&b)
    };
    let mut table = std::collections::HashMap::new();
    let mut extra = 0;
    for b in 0u32..256 {
        let c = if printable(b) {
            b
        } else {
            extra += 1;
            255 + extra
        };
        if let Some(c) = char::from_u32(c) {
            table.insert(c, b as u8);
        }
    }
    let bytes: Vec<u8> = text
        .chars()
        .filter_map(|c| table.get(&c).copied())
        .collect();
    String::from_utf8_lossy(&bytes).into_owned()
}

fn read_text(path: &Path) -> Result<String, TokenizerError> {
    std::fs::read_to_string(path).map_err(|source| TokenizerError::Io {
        path: path.to_path_buf(),
        source,
    })
}

/// A special token as written in a config: a string, or an AddedToken
/// object `{"content": "...", ...}` (older transformers).
fn token_content(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Object(o) => o.get("content")?.as_str().map(str::to_string),
        _ => None,
    }
}
