//! The model file format, versions 1, 2 and 3.
//!
//! ```text
//! RECSYS-MODEL 1 <json-bytes>\n     first line: magic, format version, header length
//! <JSON header, json-bytes long>\n  provenance, algorithm, parameters, dims,
//!                                   item names, user ids, body layout + BLAKE3
//! <body>                            little-endian sections, in header order
//! ```
//!
//! The first line alone decides whether the file is ours and which version it
//! is, so a later version may change everything after it. The body holds, in
//! this order: `scalars` f32 (svd: global mean, min and max rating),
//! `user_bias` f32[n_users], `item_bias` f32[n_items] (svd only),
//! `user_factors` f32[n_users·k], `item_factors` f32[n_items·k],
//! `item_counts` u32[n_items], `seen_offsets` u64[n_users+1] and
//! `seen_items` u32[nnz] (CSR of each user's training items). Version 2 adds
//! `item_scores` f32[n_items] (the recency prior of recent and ease) and
//! `item_item` f32[n_items²] (ease's weights, row-major); algorithms that use
//! neither are still written as version 1, byte for byte as before. Sections
//! an algorithm does not use have length 0. Version 3 (models with
//! cold-user cohorts) has version 2's body and adds `cohorts` to the JSON
//! header: per cohort its key, training-user count and item list. Loading checks every length against
//! the dims, the body checksum, finiteness and CSR consistency, and refuses
//! trailing bytes.

use std::io::{BufRead, BufReader, Read, Write};

use serde::{Deserialize, Serialize};

use super::train::MAX_FACTORS;
use super::{Algo, CohortList, Model, ModelError, Params, popularity_order};

pub const MAGIC: &str = "RECSYS-MODEL";
/// The newest format this build writes; it reads 1 ..= this.
pub const FORMAT_VERSION: u32 = 3;

/// Refuse headers beyond this size instead of reading without bound.
const MAX_HEADER_BYTES: u64 = 1 << 30;
/// Domain separation for `content_digest`.
const CONTENT_DOMAIN: &[u8] = b"recsys model content v1\0";

/// Provenance the caller records with a model, plus the item names (index i of
/// the model is `item_names[i]`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Header {
    /// Digest of the training dataset artifact.
    pub dataset_digest: String,
    /// Code version that trained the model.
    pub code_commit: String,
    /// Creation time, e.g. RFC 3339; stored verbatim.
    pub created: String,
    pub item_names: Vec<String>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileHeader {
    magic: String,
    format_version: u32,
    algorithm: Algo,
    params: Params,
    n_users: u64,
    n_items: u64,
    factors: u64,
    dataset_digest: String,
    code_commit: String,
    created: String,
    item_names: Vec<String>,
    user_ids: Vec<u32>,
    /// Version 3 only.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    cohorts: Vec<CohortList>,
    body: BodyLayout,
}

#[derive(Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct BodyLayout {
    byte_order: String,
    bytes: u64,
    blake3: String,
    sections: Vec<Section>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Section {
    name: String,
    dtype: String,
    len: u64,
}

/// Sections of version 2; version 1 has the first [`V1_SECTIONS`].
const SECTIONS: [(&str, &str); 10] = [
    ("scalars", "f32"),
    ("user_bias", "f32"),
    ("item_bias", "f32"),
    ("user_factors", "f32"),
    ("item_factors", "f32"),
    ("item_counts", "u32"),
    ("seen_offsets", "u64"),
    ("seen_items", "u32"),
    ("item_scores", "f32"),
    ("item_item", "f32"),
];
const V1_SECTIONS: usize = 8;
/// Index of seen_items, the one section whose length the dims leave free.
const NNZ_SECTION: usize = 7;

/// The version a model of `algo` is written in.
fn version_for(algo: Algo, cohorts: bool) -> u32 {
    if cohorts {
        3
    } else if algo.has_recency_prior() {
        2
    } else {
        1
    }
}

/// Section lengths implied by the dims (seen_items' length is free);
/// `None` on overflow (only a lying header gets there).
fn expected_lens(algo: Algo, n_users: u64, n_items: u64, k: u64, nnz: u64) -> Option<[u64; 10]> {
    let svd = u64::from(algo == Algo::Svd);
    let prior = u64::from(algo.has_recency_prior());
    let ease = u64::from(algo.has_item_item());
    Some([
        3 * svd,
        n_users * svd,
        n_items * svd,
        n_users.checked_mul(k)?,
        n_items.checked_mul(k)?,
        n_items,
        n_users.checked_add(1)?,
        nnz,
        n_items * prior,
        n_items.checked_mul(n_items)? * ease,
    ])
}

fn body_bytes(model: &Model) -> Vec<u8> {
    let mut out = Vec::new();
    for v in model
        .scalars
        .iter()
        .chain(&model.user_bias)
        .chain(&model.item_bias)
        .chain(&model.user_factors)
        .chain(&model.item_factors)
    {
        out.extend_from_slice(&v.to_le_bytes());
    }
    for v in &model.item_counts {
        out.extend_from_slice(&v.to_le_bytes());
    }
    for v in &model.seen_offsets {
        out.extend_from_slice(&v.to_le_bytes());
    }
    for v in &model.seen_items {
        out.extend_from_slice(&v.to_le_bytes());
    }
    // Version 2 sections last, so a version 1 body is unchanged.
    for v in model.item_scores.iter().chain(&model.item_item) {
        out.extend_from_slice(&v.to_le_bytes());
    }
    out
}

fn sections_of(model: &Model) -> Vec<Section> {
    let lens = [
        model.scalars.len(),
        model.user_bias.len(),
        model.item_bias.len(),
        model.user_factors.len(),
        model.item_factors.len(),
        model.item_counts.len(),
        model.seen_offsets.len(),
        model.seen_items.len(),
        model.item_scores.len(),
        model.item_item.len(),
    ];
    let n = if version_for(model.algo, false) == 1 {
        V1_SECTIONS
    } else {
        SECTIONS.len()
    };
    SECTIONS[..n]
        .iter()
        .zip(lens)
        .map(|(&(name, dtype), len)| Section {
            name: name.to_owned(),
            dtype: dtype.to_owned(),
            len: len as u64,
        })
        .collect()
}

/// Writes `model` with provenance `header`. Fails if the item names do not
/// match the model's item count.
pub fn save(model: &Model, header: &Header, mut writer: impl Write) -> Result<(), ModelError> {
    check_names(model, header)?;
    let body = body_bytes(model);
    let version = version_for(model.algo, !model.cohorts.is_empty());
    let file_header = FileHeader {
        magic: MAGIC.to_owned(),
        format_version: version,
        algorithm: model.algo,
        params: model.params.clone(),
        n_users: model.user_ids.len() as u64,
        n_items: model.n_items as u64,
        factors: model.k as u64,
        dataset_digest: header.dataset_digest.clone(),
        code_commit: header.code_commit.clone(),
        created: header.created.clone(),
        item_names: header.item_names.clone(),
        user_ids: model.user_ids.clone(),
        cohorts: model.cohorts.clone(),
        body: BodyLayout {
            byte_order: "little-endian".to_owned(),
            bytes: body.len() as u64,
            blake3: blake3::hash(&body).to_hex().to_string(),
            sections: sections_of(model),
        },
    };
    // serde_json escapes control characters, so the JSON is one line.
    let json = serde_json::to_vec(&file_header).map_err(|e| ModelError::InvalidHeader {
        reason: e.to_string(),
    })?;
    writeln!(writer, "{MAGIC} {version} {}", json.len())?;
    writer.write_all(&json)?;
    writer.write_all(b"\n")?;
    writer.write_all(&body)?;
    writer.flush()?;
    Ok(())
}

fn check_names(model: &Model, header: &Header) -> Result<(), ModelError> {
    if header.item_names.len() != model.n_items {
        return Err(ModelError::DimsMismatch {
            what: "item names".to_owned(),
            expected: model.n_items as u64,
            found: header.item_names.len() as u64,
        });
    }
    Ok(())
}

/// Reads and fully validates a model file.
pub fn load(reader: impl Read) -> Result<(Header, Model), ModelError> {
    let mut reader = BufReader::new(reader);

    // First line, bounded.
    let mut line = Vec::new();
    (&mut reader).take(64).read_until(b'\n', &mut line)?;
    if line.last() != Some(&b'\n') {
        let is_prefix = MAGIC.as_bytes().starts_with(&line) || line.starts_with(MAGIC.as_bytes());
        return Err(if line.len() < 64 && is_prefix {
            ModelError::Truncated { part: "first line" }
        } else {
            ModelError::BadMagic {
                found: String::from_utf8_lossy(&line[..line.len().min(16)]).into_owned(),
            }
        });
    }
    let text = String::from_utf8_lossy(&line[..line.len() - 1]).into_owned();
    let mut words = text.split(' ');
    let magic = words.next().unwrap_or_default();
    if magic != MAGIC {
        return Err(ModelError::BadMagic {
            found: magic.chars().take(16).collect(),
        });
    }
    let version_word = words.next().unwrap_or_default();
    let version = match version_word.parse::<u32>() {
        Ok(v) if (1..=FORMAT_VERSION).contains(&v) => v,
        _ => {
            return Err(ModelError::UnsupportedVersion {
                found: version_word.chars().take(16).collect(),
            });
        }
    };
    let json_len = match (words.next().map(str::parse::<u64>), words.next()) {
        (Some(Ok(n)), None) if n <= MAX_HEADER_BYTES => n,
        _ => {
            return Err(ModelError::InvalidHeader {
                reason: format!("bad first line {text:?}"),
            });
        }
    };

    let json = read_exact_part(&mut reader, json_len + 1, "header")?;
    if json.last() != Some(&b'\n') {
        return Err(ModelError::InvalidHeader {
            reason: "header is not followed by a newline".to_owned(),
        });
    }
    let fh: FileHeader =
        serde_json::from_slice(&json[..json.len() - 1]).map_err(|e| ModelError::InvalidHeader {
            reason: e.to_string(),
        })?;
    if fh.magic != MAGIC || fh.format_version != version {
        return Err(ModelError::InvalidHeader {
            reason: "magic or version in the JSON header disagree with the first line".to_owned(),
        });
    }
    if fh.body.byte_order != "little-endian" {
        return Err(ModelError::InvalidHeader {
            reason: format!("unsupported byte order {:?}", fh.body.byte_order),
        });
    }
    check_dims(&fh)?;

    let body = read_exact_part(&mut reader, fh.body.bytes, "body")?;
    let mut probe = [0u8; 1];
    if reader.read(&mut probe)? != 0 {
        return Err(ModelError::TrailingBytes);
    }
    let found = blake3::hash(&body).to_hex().to_string();
    if found != fh.body.blake3 {
        return Err(ModelError::ChecksumMismatch {
            expected: fh.body.blake3,
            found,
        });
    }
    decode(fh, &body)
}

/// Reads exactly `len` bytes without trusting `len` for the allocation.
fn read_exact_part(
    reader: &mut impl Read,
    len: u64,
    part: &'static str,
) -> Result<Vec<u8>, ModelError> {
    let mut buf = Vec::new();
    reader.take(len).read_to_end(&mut buf)?;
    if (buf.len() as u64) < len {
        return Err(ModelError::Truncated { part });
    }
    Ok(buf)
}

fn mismatch(what: impl Into<String>, expected: u64, found: u64) -> ModelError {
    ModelError::DimsMismatch {
        what: what.into(),
        expected,
        found,
    }
}

fn check_dims(fh: &FileHeader) -> Result<(), ModelError> {
    let (n_users, n_items, k) = (fh.n_users, fh.n_items, fh.factors);
    let factored = matches!(fh.algorithm, Algo::Svd | Algo::Als);
    let want_k = if factored {
        u64::from(fh.params.factors)
    } else {
        0
    };
    if k != want_k {
        return Err(mismatch("factors", want_k, k));
    }
    let want = version_for(fh.algorithm, !fh.cohorts.is_empty());
    if want != fh.format_version {
        return Err(ModelError::InvalidHeader {
            reason: format!(
                "a {} model{} is written in format {want}, not {}",
                fh.algorithm,
                if fh.cohorts.is_empty() {
                    ""
                } else {
                    " with cohorts"
                },
                fh.format_version
            ),
        });
    }
    check_cohorts(fh)?;
    if factored && !(1..=u64::from(MAX_FACTORS)).contains(&k) {
        return Err(ModelError::InvalidHeader {
            reason: format!("{} model with {k} factors", fh.algorithm),
        });
    }
    if fh.user_ids.len() as u64 != n_users {
        return Err(mismatch("user ids", n_users, fh.user_ids.len() as u64));
    }
    if fh.item_names.len() as u64 != n_items {
        return Err(mismatch("item names", n_items, fh.item_names.len() as u64));
    }
    let n_sections = if fh.format_version == 1 {
        V1_SECTIONS
    } else {
        SECTIONS.len()
    };
    if fh.body.sections.len() != n_sections {
        return Err(mismatch(
            "section count",
            n_sections as u64,
            fh.body.sections.len() as u64,
        ));
    }
    let nnz = fh.body.sections[NNZ_SECTION].len;
    let lens = expected_lens(fh.algorithm, n_users, n_items, k, nnz)
        .ok_or_else(|| mismatch("factor matrix size", u64::MAX, k))?;
    let mut bytes = 0u64;
    for ((sec, &(name, dtype)), len) in fh.body.sections.iter().zip(&SECTIONS).zip(lens) {
        if sec.name != name || sec.dtype != dtype {
            return Err(ModelError::InvalidHeader {
                reason: format!(
                    "section {}:{} where {name}:{dtype} was expected",
                    sec.name, sec.dtype
                ),
            });
        }
        if sec.len != len {
            return Err(mismatch(format!("section {name}"), len, sec.len));
        }
        let width = if dtype == "u64" { 8 } else { 4 };
        bytes = len
            .checked_mul(width)
            .and_then(|b| b.checked_add(bytes))
            .ok_or_else(|| mismatch("body bytes", 0, u64::MAX))?;
    }
    if bytes != fh.body.bytes {
        return Err(mismatch("body bytes", bytes, fh.body.bytes));
    }
    Ok(())
}

/// Cohort lists: a recency-prior model's, keys strictly increasing,
/// items in range and distinct.
fn check_cohorts(fh: &FileHeader) -> Result<(), ModelError> {
    if fh.cohorts.is_empty() {
        return Ok(());
    }
    let invalid = |reason: String| ModelError::InvalidSection {
        section: "cohorts",
        reason,
    };
    if !fh.algorithm.has_recency_prior() || fh.params.cohorts.is_none() {
        return Err(invalid(format!(
            "a {} model without cohort parameters has cohort lists",
            fh.algorithm
        )));
    }
    if fh.cohorts.windows(2).any(|w| w[0].key >= w[1].key) {
        return Err(invalid("keys are not strictly increasing".to_owned()));
    }
    for c in &fh.cohorts {
        if c.items.len() > super::cohort::COHORT_LIST_LEN {
            return Err(invalid(format!("{}: {} items", c.key, c.items.len())));
        }
        let mut items = c.items.clone();
        items.sort_unstable();
        if items.windows(2).any(|w| w[0] == w[1]) {
            return Err(invalid(format!("{}: an item twice", c.key)));
        }
        if let Some(&last) = items.last()
            && last as u64 >= fh.n_items
        {
            return Err(invalid(format!("{}: item {last} >= {}", c.key, fh.n_items)));
        }
    }
    Ok(())
}

fn decode(fh: FileHeader, body: &[u8]) -> Result<(Header, Model), ModelError> {
    // Lengths were validated against the body size in check_dims.
    let mut parts: Vec<&[u8]> = Vec::with_capacity(SECTIONS.len());
    let mut rest = body;
    for (sec, &(_, dtype)) in fh.body.sections.iter().zip(&SECTIONS) {
        let width = if dtype == "u64" { 8 } else { 4 };
        let (bytes, tail) = rest.split_at(sec.len as usize * width);
        parts.push(bytes);
        rest = tail;
    }
    debug_assert!(rest.is_empty());
    parts.resize(SECTIONS.len(), &[]);
    let f32s = |index: usize| -> Result<Vec<f32>, ModelError> {
        let v: Vec<f32> = parts[index]
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        match v.iter().position(|x| !x.is_finite()) {
            Some(at) => Err(ModelError::NonFinite {
                section: SECTIONS[index].0,
                index: at,
            }),
            None => Ok(v),
        }
    };
    let scalars = f32s(0)?;
    let user_bias = f32s(1)?;
    let item_bias = f32s(2)?;
    let user_factors = f32s(3)?;
    let item_factors = f32s(4)?;
    let (counts, offsets, items) = (parts[5], parts[6], parts[7]);
    let item_scores = f32s(8)?;
    let item_item = f32s(9)?;
    let u32s = |b: &[u8]| -> Vec<u32> {
        b.chunks_exact(4)
            .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect()
    };
    let item_counts = u32s(counts);
    let seen_items = u32s(items);
    let seen_offsets: Vec<u64> = offsets
        .chunks_exact(8)
        .map(|c| u64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]))
        .collect();

    let n_items = fh.n_items as usize;
    let invalid = |section, reason: String| ModelError::InvalidSection { section, reason };
    if fh.user_ids.windows(2).any(|w| w[0] >= w[1]) {
        return Err(ModelError::InvalidHeader {
            reason: "user ids are not strictly increasing".to_owned(),
        });
    }
    if let [mean, lo, hi] = scalars[..]
        && !(lo <= mean && mean <= hi)
    {
        return Err(invalid(
            "scalars",
            format!("mean {mean} outside [{lo}, {hi}]"),
        ));
    }
    if seen_offsets.first() != Some(&0) || seen_offsets.last() != Some(&(seen_items.len() as u64)) {
        return Err(invalid(
            "seen_offsets",
            "must start at 0 and end at nnz".to_owned(),
        ));
    }
    for (u, w) in seen_offsets.windows(2).enumerate() {
        if w[0] > w[1] {
            return Err(invalid("seen_offsets", format!("decreasing at user {u}")));
        }
        // In range: offsets are non-decreasing and end at nnz.
        let row = &seen_items[w[0] as usize..w[1] as usize];
        if row.windows(2).any(|p| p[0] >= p[1]) {
            return Err(invalid(
                "seen_items",
                format!("user {u}: not strictly increasing"),
            ));
        }
        if let Some(&last) = row.last()
            && last as usize >= n_items
        {
            return Err(invalid(
                "seen_items",
                format!("user {u}: item {last} >= {n_items}"),
            ));
        }
    }

    let header = Header {
        dataset_digest: fh.dataset_digest,
        code_commit: fh.code_commit,
        created: fh.created,
        item_names: fh.item_names,
    };
    let model = Model {
        algo: fh.algorithm,
        params: fh.params,
        n_items,
        k: fh.factors as usize,
        user_ids: fh.user_ids,
        cohorts: fh.cohorts,
        scalars,
        user_bias,
        item_bias,
        user_factors,
        item_factors,
        popular: popularity_order(&item_counts, &item_scores),
        item_counts,
        item_scores,
        item_item,
        seen_offsets,
        seen_items,
    };
    Ok((header, model))
}

/// BLAKE3 (hex) over what determines the model's answers: algorithm,
/// parameters, dims, item names, user ids and every weight. The commit,
/// creation time and dataset digest are left out, so retraining the same
/// data with the same parameters and seed reproduces the digest.
pub fn content_digest(model: &Model, header: &Header) -> String {
    let mut h = blake3::Hasher::new();
    h.update(CONTENT_DOMAIN);
    let mut put = |bytes: &[u8]| {
        h.update(&(bytes.len() as u64).to_le_bytes());
        h.update(bytes);
    };
    put(model.algo.name().as_bytes());
    put(&serde_json::to_vec(&model.params).unwrap_or_default());
    put(&(model.n_items as u64).to_le_bytes());
    put(&(model.k as u64).to_le_bytes());
    put(&(header.item_names.len() as u64).to_le_bytes());
    for name in &header.item_names {
        put(name.as_bytes());
    }
    let ids: Vec<u8> = model
        .user_ids
        .iter()
        .flat_map(|u| u.to_le_bytes())
        .collect();
    put(&ids);
    put(&body_bytes(model));
    // Only models that have cohorts hash them: older digests stay.
    if !model.cohorts.is_empty() {
        put(&serde_json::to_vec(&model.cohorts).unwrap_or_default());
    }
    h.finalize().to_hex().to_string()
}

#[cfg(test)]
mod tests {
    use super::super::tests::planted;
    use super::super::{Interaction, train};
    use super::*;

    fn header(n_items: usize) -> Header {
        Header {
            dataset_digest: "d1".to_owned(),
            code_commit: "abc123".to_owned(),
            created: "2026-01-01T00:00:00Z".to_owned(),
            item_names: (0..n_items).map(|i| format!("movie+{i}+1999")).collect(),
        }
    }

    fn model(algo: Algo) -> Model {
        let params = Params {
            factors: 5,
            epochs: 3,
            ..Params::default_for(algo)
        };
        train(&planted(40, 30, 3), 30, algo, &params).expect("train")
    }

    fn saved(algo: Algo) -> Vec<u8> {
        let mut buf = Vec::new();
        save(&model(algo), &header(30), &mut buf).expect("save");
        buf
    }

    /// Byte offset where the body starts.
    fn body_start(file: &[u8]) -> usize {
        let first = file.iter().position(|&b| b == b'\n').expect("line");
        first
            + 1
            + file[first + 1..]
                .iter()
                .position(|&b| b == b'\n')
                .expect("json")
            + 1
    }

    #[test]
    fn round_trip_preserves_everything() {
        for algo in Algo::ALL {
            let m = model(algo);
            let h = header(30);
            let mut buf = Vec::new();
            save(&m, &h, &mut buf).expect("save");
            let v = version_for(algo, false);
            assert!(buf.starts_with(format!("RECSYS-MODEL {v} ").as_bytes()));
            let (h2, m2) = load(&buf[..]).expect("load");
            assert_eq!(h2, h);
            assert_eq!(m2, m);
            assert_eq!(content_digest(&m2, &h2), content_digest(&m, &h));
            assert_eq!(m2.recommend(1000, 5, true), m.recommend(1000, 5, true));
        }
    }

    #[test]
    fn digest_ignores_provenance_but_not_content() {
        let m = model(Algo::Svd);
        let h = header(30);
        let other = Header {
            code_commit: "def456".to_owned(),
            created: "2027-01-01T00:00:00Z".to_owned(),
            dataset_digest: "d2".to_owned(),
            ..h.clone()
        };
        assert_eq!(content_digest(&m, &h), content_digest(&m, &other));
        let mut renamed = h.clone();
        renamed.item_names[0] = "changed".to_owned();
        assert_ne!(content_digest(&m, &h), content_digest(&m, &renamed));
        let mut nudged = m.clone();
        nudged.item_factors[0] += 1.0;
        assert_ne!(content_digest(&m, &h), content_digest(&nudged, &h));
        let reseeded = Params {
            seed: 1,
            ..m.params.clone()
        };
        let m3 = train(&planted(40, 30, 3), 30, Algo::Svd, &reseeded).expect("train");
        assert_ne!(content_digest(&m, &h), content_digest(&m3, &h));
    }

    #[test]
    fn save_rejects_wrong_item_name_count() {
        assert!(matches!(
            save(&model(Algo::Als), &header(29), Vec::new()),
            Err(ModelError::DimsMismatch { .. })
        ));
    }

    #[test]
    fn truncation_anywhere_is_an_error() {
        for algo in Algo::ALL {
            let file = saved(algo);
            let body = body_start(&file);
            let mut cuts = vec![0, 1, 5, 12, 13, 16, body - 2, body - 1, body, body + 1];
            cuts.extend([file.len() / 2, file.len() - 4, file.len() - 1]);
            cuts.extend((0..file.len()).step_by(97));
            for cut in cuts {
                match load(&file[..cut]) {
                    Err(ModelError::Truncated { .. }) => {}
                    other => panic!("{algo} cut at {cut}/{}: {other:?}", file.len()),
                }
            }
        }
    }

    #[test]
    fn corrupt_files_are_typed_errors() {
        let file = saved(Algo::Svd);
        let body = body_start(&file);

        let mut magic = file.clone();
        magic[0] = b'X';
        assert!(matches!(load(&magic[..]), Err(ModelError::BadMagic { .. })));
        assert!(matches!(
            load(&b"PK\x03\x04 some zip"[..]),
            Err(ModelError::BadMagic { .. })
        ));
        assert!(matches!(
            load(&[0u8; 100][..]),
            Err(ModelError::BadMagic { .. })
        ));

        let mut v4 = file.clone();
        v4[13] = b'4';
        assert!(matches!(
            load(&v4[..]),
            Err(ModelError::UnsupportedVersion { found }) if found == "4"
        ));
        // An svd model is a version 1 file; claiming 2 is refused.
        let mut v2 = file.clone();
        v2[13] = b'2';
        assert!(matches!(
            load(&v2[..]),
            Err(ModelError::InvalidHeader { .. })
        ));
        // recent and ease are version 2 files.
        assert!(saved(Algo::Ease).starts_with(b"RECSYS-MODEL 2 "));
        assert!(saved(Algo::Recent).starts_with(b"RECSYS-MODEL 2 "));

        let mut trailing = file.clone();
        trailing.push(0);
        assert!(matches!(
            load(&trailing[..]),
            Err(ModelError::TrailingBytes)
        ));

        let mut flipped = file.clone();
        let last = flipped.len() - 1;
        flipped[last] ^= 1;
        assert!(matches!(
            load(&flipped[..]),
            Err(ModelError::ChecksumMismatch { .. })
        ));

        let mut header_junk = file.clone();
        header_junk[body - 2] = b'#';
        assert!(matches!(
            load(&header_junk[..]),
            Err(ModelError::InvalidHeader { .. })
        ));
    }

    #[test]
    fn flipped_bytes_never_panic() {
        let file = saved(Algo::Svd);
        let body = body_start(&file);
        let positions = (0..body).chain((body..file.len()).step_by(13));
        for pos in positions {
            for bit in [0x01u8, 0x20, 0x80] {
                let mut bad = file.clone();
                bad[pos] ^= bit;
                // Either a typed error or (for a harmless header change such as
                // a name's letter case) a valid model; never a panic.
                let _ = load(&bad[..]);
            }
        }
    }

    /// Rewrites the JSON header with `edit` and re-frames the file; with
    /// `body` given, replaces the body and fixes its checksum.
    fn reframe(
        file: &[u8],
        edit: impl FnOnce(&mut serde_json::Value),
        body: Option<Vec<u8>>,
    ) -> Vec<u8> {
        let start = body_start(file);
        let first = file.iter().position(|&b| b == b'\n').expect("line");
        let mut v: serde_json::Value =
            serde_json::from_slice(&file[first + 1..start - 1]).expect("json");
        let body = body.unwrap_or_else(|| file[start..].to_vec());
        v["body"]["blake3"] = blake3::hash(&body).to_hex().to_string().into();
        edit(&mut v);
        let json = serde_json::to_vec(&v).expect("json");
        let mut out = format!("RECSYS-MODEL 1 {}\n", json.len()).into_bytes();
        out.extend(json);
        out.push(b'\n');
        out.extend(body);
        out
    }

    #[test]
    fn dims_mismatch_and_bad_values_are_typed_errors() {
        let file = saved(Algo::Als);
        let start = body_start(&file);
        // Sanity: reframing without edits loads.
        load(&reframe(&file, |_| {}, None)[..]).expect("unedited");

        type Edit = Box<dyn Fn(&mut serde_json::Value)>;
        let cases: Vec<Edit> = vec![
            Box::new(|v| v["n_items"] = 31.into()),
            Box::new(|v| v["n_users"] = 39.into()),
            Box::new(|v| v["factors"] = 6.into()),
            Box::new(|v| v["params"]["factors"] = 6.into()),
            Box::new(|v| v["body"]["sections"][3]["len"] = 1.into()),
            Box::new(|v| v["body"]["bytes"] = 8.into()),
            Box::new(|v| {
                v["item_names"].as_array_mut().expect("names").pop();
            }),
            Box::new(|v| {
                v["user_ids"].as_array_mut().expect("ids").pop();
            }),
        ];
        for (n, edit) in cases.into_iter().enumerate() {
            match load(&reframe(&file, edit, None)[..]) {
                Err(ModelError::DimsMismatch { .. }) => {}
                other => panic!("case {n}: {other:?}"),
            }
        }
        let no_factors = reframe(
            &file,
            |v| {
                v["factors"] = 0.into();
                v["params"]["factors"] = 0.into();
            },
            None,
        );
        assert!(load(&no_factors[..]).is_err());
        let huge = reframe(&file, |v| v["n_items"] = u64::MAX.into(), None);
        assert!(load(&huge[..]).is_err());
        let bad_section = reframe(
            &file,
            |v| v["body"]["sections"][0]["dtype"] = "f64".into(),
            None,
        );
        assert!(matches!(
            load(&bad_section[..]),
            Err(ModelError::InvalidHeader { .. })
        ));
        let unknown = reframe(&file, |v| v["extra"] = 1.into(), None);
        assert!(matches!(
            load(&unknown[..]),
            Err(ModelError::InvalidHeader { .. })
        ));
        let bad_algo = reframe(&file, |v| v["algorithm"] = "knn".into(), None);
        assert!(matches!(
            load(&bad_algo[..]),
            Err(ModelError::InvalidHeader { .. })
        ));
        let unsorted = reframe(&file, |v| v["user_ids"][0] = 5000.into(), None);
        assert!(matches!(
            load(&unsorted[..]),
            Err(ModelError::InvalidHeader { .. })
        ));

        // NaN in the first weight (user_factors: scalars and biases are empty for als).
        let mut body = file[start..].to_vec();
        body[..4].copy_from_slice(&f32::NAN.to_le_bytes());
        assert!(matches!(
            load(&reframe(&file, |_| {}, Some(body))[..]),
            Err(ModelError::NonFinite {
                section: "user_factors",
                index: 0
            })
        ));
        // A seen item beyond n_items (the last u32 of the body).
        let mut body = file[start..].to_vec();
        let n = body.len();
        body[n - 4..].copy_from_slice(&999u32.to_le_bytes());
        assert!(matches!(
            load(&reframe(&file, |_| {}, Some(body))[..]),
            Err(ModelError::InvalidSection { .. })
        ));
        // A first seen offset that is not 0.
        let m = model(Algo::Als);
        let off_at = (m.user_factors.len() + m.item_factors.len() + m.item_counts.len()) * 4;
        let mut body = file[start..].to_vec();
        body[off_at..off_at + 8].copy_from_slice(&1u64.to_le_bytes());
        assert!(matches!(
            load(&reframe(&file, |_| {}, Some(body))[..]),
            Err(ModelError::InvalidSection {
                section: "seen_offsets",
                ..
            })
        ));
    }

    #[test]
    fn training_is_deterministic_across_runs_and_thread_counts() {
        let data: Vec<Interaction> = planted(80, 60, 3);
        let h = header(60);
        for algo in Algo::ALL {
            let params = Params::default_for(algo);
            let digest_with = |threads: usize| {
                let pool = rayon::ThreadPoolBuilder::new()
                    .num_threads(threads)
                    .build()
                    .expect("pool");
                let m = pool
                    .install(|| train(&data, 60, algo, &params))
                    .expect("train");
                content_digest(&m, &h)
            };
            let one = digest_with(1);
            assert_eq!(one, digest_with(1), "{algo} run to run");
            assert_eq!(one, digest_with(3), "{algo} thread count");
        }
    }
}
