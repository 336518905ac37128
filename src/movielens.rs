//! Reader for the MovieLens 100K dataset, the real data for tests and the
//! demo.
//!
//! This module owns turning a MovieLens 100K directory into plain Rust data
//! ([`MovieLens`]) and turning MovieLens titles into course-style movie ids
//! ([`movie_id`]). It reads the files it is given and nothing else: no
//! printing, no environment, no network. Two layouts are understood and
//! detected by [`read_dir`]:
//!
//! - [`Layout::Classic`], the GroupLens archive: `u.data` (tab separated
//!   `user item rating timestamp`), `u.user` (`id|age|gender|occupation|zip`),
//!   `u.item` (`id|title|release date|video release date|IMDb URL|genre
//!   flags…`, Latin-1) and, if present, `u.genre` (`name|index`; without it
//!   the 19 standard genre names are used). All classic files are decoded as
//!   Latin-1.
//! - [`Layout::RecBole`], RecBole's atomic files as shipped in the
//!   `recbole==1.2.1` wheel: `<name>.inter`, `<name>.user`, `<name>.item`,
//!   tab separated UTF-8 with typed headers (`user_id:token`, …). Columns are
//!   found by header name, not position. Titles there carry no year (it is
//!   in `release_year`), and a non-numeric year (`unkonwn`) means no year.
//!
//! Every [`Movie::title`] is the MovieLens title without its trailing
//! `(YYYY)`; the year is in [`Movie::year`]. Movie ids are unique within a
//! dataset: when two movies map to the same id (MovieLens 100K lists some
//! films twice), the later one in item-id order gets `+2`, the next `+3`,
//! and so on.

use std::collections::{HashMap, HashSet};
use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::stream::is_valid_movie_id;
use crate::text::{CLIP, clip, clip_to};

/// The genre names of MovieLens 100K, in `u.item` flag order; used when
/// `u.genre` is absent.
pub const GENRES: [&str; 19] = [
    "unknown",
    "Action",
    "Adventure",
    "Animation",
    "Children's",
    "Comedy",
    "Crime",
    "Documentary",
    "Drama",
    "Fantasy",
    "Film-Noir",
    "Horror",
    "Musical",
    "Mystery",
    "Romance",
    "Sci-Fi",
    "Thriller",
    "War",
    "Western",
];

/// Articles that MovieLens moves to the end of a title (`Lion King, The`),
/// compared without regard to ASCII case.
const ARTICLES: &[&str] = &[
    "the", "a", "an", "les", "la", "le", "l'", "il", "lo", "gli", "el", "los", "las", "das", "der",
    "die", "den", "det", "un", "une", "una",
];

/// Which on-disk layout a dataset was read from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Layout {
    /// The GroupLens archive (`u.data`, `u.user`, `u.item`).
    Classic,
    /// RecBole atomic files (`ml-100k.inter`, `.user`, `.item`).
    RecBole,
}

/// One rating of one movie by one user.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Rating {
    /// User id.
    pub user: u32,
    /// MovieLens item id (see [`Movie::id`]).
    pub item: u32,
    /// The rating (1-5 in MovieLens 100K).
    pub rating: f32,
    /// Seconds since the Unix epoch.
    pub timestamp: i64,
}

/// A MovieLens user.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct User {
    /// User id.
    pub id: u32,
    /// Age in years.
    pub age: u32,
    /// `M` or `F`, as in the data.
    pub gender: String,
    /// Occupation, e.g. `technician`.
    pub occupation: String,
}

/// A MovieLens movie.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Movie {
    /// MovieLens item id.
    pub id: u32,
    /// Course-style movie id, unique within the dataset, e.g. `toy+story+1995`.
    pub movie_id: String,
    /// Title without the trailing `(YYYY)`, e.g. `Lion King, The`.
    pub title: String,
    /// Release year, when known.
    pub year: Option<u32>,
    /// Genre names, e.g. `["Animation", "Children's", "Comedy"]`.
    pub genres: Vec<String>,
}

/// A whole MovieLens dataset.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MovieLens {
    /// All ratings, in file order.
    pub ratings: Vec<Rating>,
    /// All users, in file order.
    pub users: Vec<User>,
    /// All movies, sorted by item id.
    pub movies: Vec<Movie>,
    /// The layout the data was read from.
    pub layout: Layout,
}

/// Why a MovieLens directory could not be read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MovieLensError {
    /// Neither `u.data` nor a RecBole `.inter` file is in the directory.
    #[error("{}: no MovieLens data found (expected u.data or one <name>.inter file)", dir.display())]
    UnknownLayout {
        /// The directory searched.
        dir: PathBuf,
    },
    /// The directory holds several RecBole `.inter` files.
    #[error("{}: several .inter files, cannot tell which dataset to read", dir.display())]
    AmbiguousLayout {
        /// The directory searched.
        dir: PathBuf,
    },
    /// A file could not be read.
    #[error(transparent)]
    Io(#[from] crate::fs_error::FsError),
    /// A RecBole file is not UTF-8.
    #[error("{}:{line}: not valid UTF-8", path.display())]
    NotUtf8 {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
    },
    /// A RecBole header lacks a needed column.
    #[error("{}: header has no column {column:?}", path.display())]
    MissingColumn {
        /// The file.
        path: PathBuf,
        /// The column name, e.g. `item_id`.
        column: &'static str,
    },
    /// A row could not be understood.
    #[error("{}:{line}: {reason}", path.display())]
    Malformed {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// What is wrong with the row.
        reason: String,
    },
}

/// Reads the MovieLens dataset in `dir`, detecting its layout: `u.data`
/// means [`Layout::Classic`], otherwise exactly one `*.inter` file means
/// [`Layout::RecBole`].
pub fn read_dir(dir: &Path) -> Result<MovieLens, MovieLensError> {
    if dir.join("u.data").is_file() {
        return read_classic(dir);
    }
    let entries = fs::read_dir(dir).map_err(crate::fs_error::io("list", dir))?;
    let mut stems = Vec::new();
    for entry in entries {
        let entry = entry.map_err(crate::fs_error::io("list", dir))?;
        let path = entry.path();
        if path.extension().is_some_and(|e| e == "inter")
            && path.is_file()
            && let Some(stem) = path.file_stem().and_then(|s| s.to_str())
        {
            stems.push(stem.to_owned());
        }
    }
    match stems.as_slice() {
        [] => Err(MovieLensError::UnknownLayout {
            dir: dir.to_path_buf(),
        }),
        [stem] => read_recbole(dir, stem),
        _ => Err(MovieLensError::AmbiguousLayout {
            dir: dir.to_path_buf(),
        }),
    }
}

/// Turns a MovieLens title into a course-style movie id.
///
/// - A trailing `(YYYY)` is removed from the title; `year`, if given, wins
///   over it. The year is appended as `+YYYY`.
/// - A trailing article (`Lion King, The`; also `, A`, `, An`, `, Les`,
///   `, La`, `, Le`, `, L'`, `, Il`, `, Das`, `, Det`, …) moves to the front.
///   A trailing parenthesised alternative title
///   (`City of Lost Children, The (Cité des enfants perdus, La)`) is treated
///   the same way on its own and kept after the main title.
/// - Words are split on whitespace, lower-cased and joined by `+`; a comma
///   becomes `_`; `-`, `.` and `_` stay; all other punctuation is dropped.
/// - Non-ASCII letters are dropped (`Misérables` -> `misrables`), as in the
///   ids seen in real streams; ids never hold percent escapes.
/// - A title with no usable characters becomes `untitled`.
///
/// The result always satisfies [`is_valid_movie_id`].
///
/// ```
/// use recsys::movielens::movie_id;
/// assert_eq!(movie_id("Toy Story (1995)", None), "toy+story+1995");
/// assert_eq!(movie_id("Lion King, The (1994)", None), "the+lion+king+1994");
/// assert_eq!(
///     movie_id("Good, The Bad and The Ugly, The (1966)", None),
///     "the+good_+the+bad+and+the+ugly+1966"
/// );
/// ```
pub fn movie_id(title: &str, year: Option<u32>) -> String {
    let (base, title_year) = split_title_year(title);
    let year = year.or(title_year);
    let (main, alt) = split_alt_title(base);
    let mut id = String::with_capacity(title.len() + 5);
    push_words(&mut id, &front_article(main));
    if let Some(alt) = alt {
        push_words(&mut id, &front_article(alt));
    }
    if id.is_empty() {
        id.push_str("untitled");
    }
    if let Some(year) = year {
        // Writing to a String cannot fail.
        let _ = write!(id, "+{year}");
    }
    debug_assert!(is_valid_movie_id(&id), "{id:?}");
    id
}

/// Splits `Toy Story (1995)` into `("Toy Story", Some(1995))`.
fn split_title_year(title: &str) -> (&str, Option<u32>) {
    let title = title.trim();
    let b = title.as_bytes();
    let n = b.len();
    if n >= 6
        && b[n - 1] == b')'
        && b[n - 6] == b'('
        && b[n - 5..n - 1].iter().all(u8::is_ascii_digit)
    {
        // b[n - 6] is ASCII, so n - 6 is a char boundary.
        (title[..n - 6].trim_end(), parse_year(&title[n - 5..n - 1]))
    } else {
        (title, None)
    }
}

/// Splits `Main (Alternative)` into its parts; the alternative is `None`
/// when the title does not end in a parenthesised group after some text.
fn split_alt_title(title: &str) -> (&str, Option<&str>) {
    let Some(inner) = title.strip_suffix(')') else {
        return (title, None);
    };
    let mut depth = 0usize;
    for (i, c) in inner.char_indices().rev() {
        match c {
            ')' => depth += 1,
            '(' if depth == 0 => {
                let main = inner[..i].trim_end();
                return if main.is_empty() {
                    (title, None)
                } else {
                    (main, Some(&inner[i + 1..]))
                };
            }
            '(' => depth -= 1,
            _ => {}
        }
    }
    (title, None)
}

/// `Lion King, The` -> `The Lion King`; `Homme, L'` -> `L'Homme`.
fn front_article(title: &str) -> String {
    if let Some((head, tail)) = title.rsplit_once(", ") {
        let article = tail.trim();
        if ARTICLES.iter().any(|a| a.eq_ignore_ascii_case(article)) {
            let sep = if article.ends_with('\'') { "" } else { " " };
            return format!("{article}{sep}{head}");
        }
    }
    title.to_owned()
}

/// Appends the id form of each word of `text` to `id`, `+`-separated.
fn push_words(id: &mut String, text: &str) {
    for word in text.split_whitespace() {
        let mut token = word.chars().filter_map(|c| match c {
            'a'..='z' | '0'..='9' | '-' | '.' | '_' => Some(c),
            'A'..='Z' => Some(c.to_ascii_lowercase()),
            ',' => Some('_'),
            _ => None,
        });
        if let Some(first) = token.next() {
            if !id.is_empty() {
                id.push('+');
            }
            id.push(first);
            id.extend(token);
        }
    }
}

/// A four-digit year, or `None` (`unkonwn`, `V`, empty).
fn parse_year(s: &str) -> Option<u32> {
    let s = s.trim();
    if s.len() == 4 && s.bytes().all(|b| b.is_ascii_digit()) {
        s.parse().ok()
    } else {
        None
    }
}

/// Gives each movie its unique id, in item-id order.
fn assign_movie_ids(movies: &mut [Movie]) {
    movies.sort_by_key(|m| m.id);
    let mut used = HashSet::with_capacity(movies.len());
    for movie in movies {
        let base = movie_id(&movie.title, movie.year);
        let mut id = base.clone();
        let mut n = 2u32;
        while used.contains(&id) {
            id = format!("{base}+{n}");
            n += 1;
        }
        used.insert(id.clone());
        movie.movie_id = id;
    }
}

/// A file's rows: 1-based line number and text without line ending; blank
/// lines are skipped.
struct Rows {
    path: PathBuf,
    lines: Vec<(usize, String)>,
}

impl Rows {
    fn read(path: PathBuf, latin1: bool) -> Result<Self, MovieLensError> {
        let bytes = fs::read(&path).map_err(crate::fs_error::io("read", &path))?;
        let mut lines = Vec::new();
        for (i, raw) in bytes.split(|&b| b == b'\n').enumerate() {
            let raw = raw.strip_suffix(b"\r").unwrap_or(raw);
            if raw.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            let text = if latin1 {
                // Latin-1 maps each byte to the code point of the same value.
                raw.iter().map(|&b| char::from(b)).collect()
            } else {
                String::from_utf8(raw.to_vec()).map_err(|_| MovieLensError::NotUtf8 {
                    path: path.clone(),
                    line: i + 1,
                })?
            };
            lines.push((i + 1, text));
        }
        Ok(Self { path, lines })
    }

    fn malformed(&self, line: usize, reason: impl Into<String>) -> MovieLensError {
        // Reasons quote input: never let one grow without bound.
        let reason: String = reason.into();
        MovieLensError::Malformed {
            path: self.path.clone(),
            line,
            reason: clip_to(&reason, 4 * CLIP).into_owned(),
        }
    }

    /// Parses field `what` of a row.
    fn num<T: std::str::FromStr>(
        &self,
        line: usize,
        what: &str,
        s: &str,
    ) -> Result<T, MovieLensError> {
        s.trim()
            .parse()
            .map_err(|_| self.malformed(line, format!("bad {what} {:?}", clip(s))))
    }

    fn rating(&self, line: usize, s: &str) -> Result<f32, MovieLensError> {
        let rating: f32 = self.num(line, "rating", s)?;
        if rating.is_finite() {
            Ok(rating)
        } else {
            Err(self.malformed(line, format!("bad rating {:?}", clip(s))))
        }
    }

    /// Seconds since the epoch, written as an integer or (RecBole's
    /// `:float` columns) an integral float.
    fn timestamp(&self, line: usize, s: &str) -> Result<i64, MovieLensError> {
        if let Ok(t) = s.trim().parse::<i64>() {
            return Ok(t);
        }
        match s.trim().parse::<f64>() {
            Ok(t) if t.fract() == 0.0 && t.abs() < 9.0e15 => Ok(t as i64),
            _ => Err(self.malformed(line, format!("bad timestamp {:?}", clip(s)))),
        }
    }
}

fn read_classic(dir: &Path) -> Result<MovieLens, MovieLensError> {
    let genre_path = dir.join("u.genre");
    let genres = if genre_path.is_file() {
        read_genres(Rows::read(genre_path, true)?)?
    } else {
        GENRES.iter().map(|&g| g.to_owned()).collect()
    };

    let data = Rows::read(dir.join("u.data"), true)?;
    let mut ratings = Vec::with_capacity(data.lines.len());
    for (line, text) in &data.lines {
        let f: Vec<&str> = text.split('\t').collect();
        let [user, item, rating, timestamp] = f.as_slice() else {
            return Err(data.malformed(
                *line,
                format!("expected 4 tab-separated fields, got {}", f.len()),
            ));
        };
        ratings.push(Rating {
            user: data.num(*line, "user id", user)?,
            item: data.num(*line, "item id", item)?,
            rating: data.rating(*line, rating)?,
            timestamp: data.timestamp(*line, timestamp)?,
        });
    }

    let user_rows = Rows::read(dir.join("u.user"), true)?;
    let mut users = Vec::with_capacity(user_rows.lines.len());
    for (line, text) in &user_rows.lines {
        let f: Vec<&str> = text.split('|').collect();
        let [id, age, gender, occupation, _zip] = f.as_slice() else {
            return Err(user_rows.malformed(
                *line,
                format!("expected 5 '|'-separated fields, got {}", f.len()),
            ));
        };
        users.push(User {
            id: user_rows.num(*line, "user id", id)?,
            age: user_rows.num(*line, "age", age)?,
            gender: (*gender).to_owned(),
            occupation: (*occupation).to_owned(),
        });
    }

    let items = Rows::read(dir.join("u.item"), true)?;
    let mut movies = Vec::with_capacity(items.lines.len());
    let mut seen = HashMap::new();
    for (line, text) in &items.lines {
        let f: Vec<&str> = text.split('|').collect();
        if f.len() != 5 + genres.len() {
            return Err(items.malformed(
                *line,
                format!(
                    "expected {} '|'-separated fields, got {}",
                    5 + genres.len(),
                    f.len()
                ),
            ));
        }
        let id: u32 = items.num(*line, "item id", f[0])?;
        if let Some(first) = seen.insert(id, *line) {
            return Err(items.malformed(*line, format!("item id {id} already on line {first}")));
        }
        let (title, title_year) = split_title_year(f[1]);
        let release_year = f[2]
            .get(f[2].len().saturating_sub(4)..)
            .and_then(parse_year);
        let mut movie_genres = Vec::new();
        for (flag, name) in f[5..].iter().zip(&genres) {
            match *flag {
                "1" => movie_genres.push(name.clone()),
                "0" => {}
                other => {
                    return Err(
                        items.malformed(*line, format!("bad genre flag {other:?} for {name}"))
                    );
                }
            }
        }
        movies.push(Movie {
            id,
            movie_id: String::new(),
            title: title.to_owned(),
            year: title_year.or(release_year),
            genres: movie_genres,
        });
    }
    assign_movie_ids(&mut movies);

    Ok(MovieLens {
        ratings,
        users,
        movies,
        layout: Layout::Classic,
    })
}

/// Reads `u.genre` (`name|index`) into names ordered by index.
fn read_genres(rows: Rows) -> Result<Vec<String>, MovieLensError> {
    let mut by_index: Vec<Option<String>> = Vec::new();
    for (line, text) in &rows.lines {
        let Some((name, index)) = text.rsplit_once('|') else {
            return Err(rows.malformed(*line, "expected name|index"));
        };
        let index: usize = rows.num(*line, "genre index", index)?;
        if index >= 64 {
            return Err(rows.malformed(*line, format!("genre index {index} too large")));
        }
        if by_index.len() <= index {
            by_index.resize(index + 1, None);
        }
        if by_index[index].replace(name.to_owned()).is_some() {
            return Err(rows.malformed(*line, format!("genre index {index} repeated")));
        }
    }
    by_index
        .into_iter()
        .enumerate()
        .map(|(i, name)| name.ok_or_else(|| rows.malformed(0, format!("no genre with index {i}"))))
        .collect()
}

/// A RecBole atomic file: rows plus column positions from the typed header.
struct Atomic {
    rows: Rows,
    header: Vec<String>,
}

impl Atomic {
    fn read(path: PathBuf) -> Result<Self, MovieLensError> {
        let mut rows = Rows::read(path, false)?;
        if rows.lines.is_empty() {
            return Err(rows.malformed(1, "empty file, expected a header"));
        }
        let (_, header) = rows.lines.remove(0);
        let header = header
            .split('\t')
            .map(|col| {
                col.split_once(':')
                    .map_or(col, |(name, _ty)| name)
                    .trim()
                    .to_owned()
            })
            .collect();
        Ok(Self { rows, header })
    }

    fn column(&self, name: &'static str) -> Result<usize, MovieLensError> {
        self.header
            .iter()
            .position(|c| c == name)
            .ok_or_else(|| MovieLensError::MissingColumn {
                path: self.rows.path.clone(),
                column: name,
            })
    }

    /// The row's fields, checked to reach `needed` columns.
    fn fields<'t>(
        &self,
        line: usize,
        text: &'t str,
        needed: usize,
    ) -> Result<Vec<&'t str>, MovieLensError> {
        let f: Vec<&str> = text.split('\t').collect();
        if f.len() <= needed {
            return Err(self.rows.malformed(
                line,
                format!(
                    "expected {} tab-separated fields, got {}",
                    self.header.len(),
                    f.len()
                ),
            ));
        }
        Ok(f)
    }
}

fn read_recbole(dir: &Path, stem: &str) -> Result<MovieLens, MovieLensError> {
    let inter = Atomic::read(dir.join(format!("{stem}.inter")))?;
    let (c_user, c_item, c_rating, c_time) = (
        inter.column("user_id")?,
        inter.column("item_id")?,
        inter.column("rating")?,
        inter.column("timestamp")?,
    );
    let needed = c_user.max(c_item).max(c_rating).max(c_time);
    let rows = &inter.rows;
    let mut ratings = Vec::with_capacity(rows.lines.len());
    for (line, text) in &rows.lines {
        let f = inter.fields(*line, text, needed)?;
        ratings.push(Rating {
            user: rows.num(*line, "user id", f[c_user])?,
            item: rows.num(*line, "item id", f[c_item])?,
            rating: rows.rating(*line, f[c_rating])?,
            timestamp: rows.timestamp(*line, f[c_time])?,
        });
    }

    let user_file = Atomic::read(dir.join(format!("{stem}.user")))?;
    let (c_id, c_age, c_gender, c_occupation) = (
        user_file.column("user_id")?,
        user_file.column("age")?,
        user_file.column("gender")?,
        user_file.column("occupation")?,
    );
    let needed = c_id.max(c_age).max(c_gender).max(c_occupation);
    let rows = &user_file.rows;
    let mut users = Vec::with_capacity(rows.lines.len());
    for (line, text) in &rows.lines {
        let f = user_file.fields(*line, text, needed)?;
        users.push(User {
            id: rows.num(*line, "user id", f[c_id])?,
            age: rows.num(*line, "age", f[c_age])?,
            gender: f[c_gender].to_owned(),
            occupation: f[c_occupation].to_owned(),
        });
    }

    let item_file = Atomic::read(dir.join(format!("{stem}.item")))?;
    let (c_id, c_title, c_year, c_class) = (
        item_file.column("item_id")?,
        item_file.column("movie_title")?,
        item_file.column("release_year")?,
        item_file.column("class")?,
    );
    let needed = c_id.max(c_title).max(c_year).max(c_class);
    let rows = &item_file.rows;
    let mut movies = Vec::with_capacity(rows.lines.len());
    let mut seen = HashMap::new();
    for (line, text) in &rows.lines {
        let f = item_file.fields(*line, text, needed)?;
        let id: u32 = rows.num(*line, "item id", f[c_id])?;
        if let Some(first) = seen.insert(id, *line) {
            return Err(rows.malformed(*line, format!("item id {id} already on line {first}")));
        }
        // A few RecBole titles still end in "(YYYY)" while the year column
        // holds junk ("V"); strip it so titles look alike in both layouts.
        let (title, title_year) = split_title_year(f[c_title]);
        movies.push(Movie {
            id,
            movie_id: String::new(),
            title: title.to_owned(),
            year: parse_year(f[c_year]).or(title_year),
            genres: f[c_class].split_whitespace().map(str::to_owned).collect(),
        });
    }
    assign_movie_ids(&mut movies);

    Ok(MovieLens {
        ratings,
        users,
        movies,
        layout: Layout::RecBole,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn required_title_examples() {
        assert_eq!(movie_id("Toy Story (1995)", None), "toy+story+1995");
        assert_eq!(
            movie_id("Good, The Bad and The Ugly, The (1966)", None),
            "the+good_+the+bad+and+the+ugly+1966"
        );
        assert_eq!(
            movie_id("Lion King, The (1994)", None),
            "the+lion+king+1994"
        );
        assert_eq!(
            movie_id("Shawshank Redemption, The (1994)", None),
            "the+shawshank+redemption+1994"
        );
    }

    #[test]
    fn tricky_titles() {
        let cases = [
            (
                "City of Lost Children, The (Cité des enfants perdus, La) (1995)",
                None,
                "the+city+of+lost+children+la+cit+des+enfants+perdus+1995",
            ),
            ("Misérables, Les (1995)", None, "les+misrables+1995"),
            (
                "Contempt (Mépris, Le) (1963)",
                None,
                "contempt+le+mpris+1963",
            ),
            ("Time to Kill, A (1996)", None, "a+time+to+kill+1996"),
            (
                "American in Paris, An (1951)",
                None,
                "an+american+in+paris+1951",
            ),
            ("Homme, L'", Some(1999), "lhomme+1999"),
            ("Boot, Das (1981)", None, "das+boot+1981"),
            ("Mr. Holland's Opus (1995)", None, "mr.+hollands+opus+1995"),
            (
                "Dr. Strangelove or: How I Learned to Stop Worrying and Love the Bomb (1963)",
                None,
                "dr.+strangelove+or+how+i+learned+to+stop+worrying+and+love+the+bomb+1963",
            ),
            ("Spider-Man (2002)", None, "spider-man+2002"),
            ("8 1/2 (1963)", None, "8+12+1963"),
            (
                "Á köldum klaka (Cold Fever) (1994)",
                None,
                "kldum+klaka+cold+fever+1994",
            ),
            ("Shall We Dance? (1937)", None, "shall+we+dance+1937"),
            ("Toy Story", Some(1995), "toy+story+1995"),
            ("Toy Story (1995)", Some(1996), "toy+story+1996"),
            ("unknown", None, "unknown"),
            ("", None, "untitled"),
            ("???", Some(2000), "untitled+2000"),
            ("(1995)", None, "untitled+1995"),
            ("(Alternative only)", None, "alternative+only"),
            (
                "Kids in the Hall: Brain Candy (1996)",
                None,
                "kids+in+the+hall+brain+candy+1996",
            ),
            ("Walk in the Clouds, A", None, "a+walk+in+the+clouds"),
            ("Rock, Paper, Scissors", None, "rock_+paper_+scissors"),
            (
                "Nobody Loves Me (Keiner liebt mich) (1994)",
                None,
                "nobody+loves+me+keiner+liebt+mich+1994",
            ),
            ("a , b", None, "a+_+b"),
            ("Half ((Nested) paren)", None, "half+nested+paren"),
            ("Unbalanced) (x", None, "unbalanced+x"),
        ];
        for (title, year, want) in cases {
            let id = movie_id(title, year);
            assert_eq!(id, want, "{title:?}");
            assert!(is_valid_movie_id(&id), "{id}");
        }
    }

    #[test]
    fn title_year_split() {
        assert_eq!(
            split_title_year(" Toy Story (1995) "),
            ("Toy Story", Some(1995))
        );
        assert_eq!(
            split_title_year("Toy Story (19x5)"),
            ("Toy Story (19x5)", None)
        );
        assert_eq!(split_title_year("é(1995)"), ("é", Some(1995)));
        assert_eq!(parse_year("unkonwn"), None);
        assert_eq!(parse_year("V"), None);
    }

    /// A fresh empty directory under the system temp dir.
    fn fixture(files: &[(&str, &[u8])]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().expect("tempdir");
        for (name, content) in files {
            fs::write(dir.path().join(name), content).expect("write fixture");
        }
        dir
    }

    const U_DATA: &[u8] =
        b"196\t242\t3\t881250949\n186\t302\t3\t891717742\r\n22\t377\t1\t878887116\n\n";
    const U_USER: &[u8] = b"1|24|M|technician|85711\n2|53|F|other|94043\n";

    fn u_item() -> Vec<u8> {
        let flags = |on: &[usize]| {
            (0..19)
                .map(|i| if on.contains(&i) { "1" } else { "0" })
                .collect::<Vec<_>>()
                .join("|")
        };
        let mut item = Vec::new();
        item.extend_from_slice(
            format!("1|Toy Story (1995)|01-Jan-1995||http://us.imdb.com/M/title-exact?Toy%20Story%20(1995)|{}\n", flags(&[3, 4, 5])).as_bytes(),
        );
        // 0xE9 is 'é' in Latin-1 (and invalid UTF-8 on its own).
        item.extend_from_slice(b"543|Mis\xe9rables, Les (1995)|01-Jan-1995||http://x|");
        item.extend_from_slice(flags(&[8, 12]).as_bytes());
        item.push(b'\n');
        item.extend_from_slice(format!("267|unknown||||{}\n", flags(&[0])).as_bytes());
        item.extend_from_slice(
            format!("30|Belle de jour|01-Jan-1967|||{}\n", flags(&[8])).as_bytes(),
        );
        item.extend_from_slice(
            format!("2|Toy Story (1995)|01-Jan-1995|||{}\n", flags(&[5])).as_bytes(),
        );
        item
    }

    #[test]
    fn reads_classic_layout() {
        let item = u_item();
        let dir = fixture(&[("u.data", U_DATA), ("u.user", U_USER), ("u.item", &item)]);
        let ml = read_dir(dir.path()).expect("read classic");
        assert_eq!(ml.layout, Layout::Classic);
        assert_eq!(ml.ratings.len(), 3);
        assert_eq!(
            ml.ratings[1],
            Rating {
                user: 186,
                item: 302,
                rating: 3.0,
                timestamp: 891_717_742
            }
        );
        assert_eq!(
            ml.users[1],
            User {
                id: 2,
                age: 53,
                gender: "F".into(),
                occupation: "other".into()
            }
        );
        let ids: Vec<(u32, &str)> = ml
            .movies
            .iter()
            .map(|m| (m.id, m.movie_id.as_str()))
            .collect();
        assert_eq!(
            ids,
            [
                (1, "toy+story+1995"),
                (2, "toy+story+1995+2"),
                (30, "belle+de+jour+1967"),
                (267, "unknown"),
                (543, "les+misrables+1995"),
            ]
        );
        let mis = &ml.movies[4];
        assert_eq!(mis.title, "Misérables, Les");
        assert_eq!(mis.year, Some(1995));
        assert_eq!(mis.genres, ["Drama", "Musical"]);
        assert_eq!(ml.movies[0].genres, ["Animation", "Children's", "Comedy"]);
        assert_eq!(ml.movies[3].year, None);
    }

    #[test]
    fn classic_uses_u_genre_when_present() {
        let mut names = String::new();
        for (i, _) in GENRES.iter().enumerate() {
            names.push_str(&format!("G{i}|{i}\n"));
        }
        let item = u_item();
        let dir = fixture(&[
            ("u.data", U_DATA),
            ("u.user", U_USER),
            ("u.item", &item),
            ("u.genre", names.as_bytes()),
        ]);
        let ml = read_dir(dir.path()).expect("read classic");
        assert_eq!(ml.movies[0].genres, ["G3", "G4", "G5"]);
    }

    #[test]
    fn classic_errors_name_file_and_line() {
        let item = u_item();
        let dir = fixture(&[
            ("u.data", b"1\t2\t3\t4\n1\t2\tx\t4\n"),
            ("u.user", U_USER),
            ("u.item", &item),
        ]);
        let err = read_dir(dir.path()).expect_err("bad rating");
        match &err {
            MovieLensError::Malformed { path, line, .. } => {
                assert!(path.ends_with("u.data"));
                assert_eq!(*line, 2);
            }
            other => panic!("unexpected {other:?}"),
        }
        assert!(
            err.to_string().contains("u.data:2: bad rating \"x\""),
            "{err}"
        );

        let dir = fixture(&[
            ("u.data", U_DATA),
            ("u.user", U_USER),
            ("u.item", b"1|Short|row\n"),
        ]);
        assert!(
            matches!(read_dir(dir.path()), Err(MovieLensError::Malformed { line: 1, ref path, .. }) if path.ends_with("u.item"))
        );

        let dir = fixture(&[
            ("u.data", U_DATA),
            ("u.user", b"1|24|M|technician|85711\n\n3|x|M|a|b\n"),
            ("u.item", &item),
        ]);
        assert!(
            matches!(read_dir(dir.path()), Err(MovieLensError::Malformed { line: 3, ref path, .. }) if path.ends_with("u.user"))
        );

        let dir = fixture(&[("u.data", U_DATA), ("u.user", U_USER)]);
        assert!(
            matches!(read_dir(dir.path()), Err(MovieLensError::Io(ref e)) if e.path.ends_with("u.item"))
        );
    }

    const INTER: &[u8] = b"user_id:token\titem_id:token\trating:float\ttimestamp:float\n196\t242\t3\t881250949\n186\t302\t4.5\t891717742.0\n";
    // Columns deliberately in another order than RecBole writes them.
    const USER: &[u8] = b"zip_code:token\tuser_id:token\tgender:token\tage:token\toccupation:token\n85711\t1\tM\t24\ttechnician\n";
    const ITEM: &[u8] =
        "item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq\n\
        1\tToy Story\t1995\tAnimation Children's Comedy\n\
        543\tMisérables, Les\t1995\tDrama Musical\n\
        267\tunkonwn\tunkonwn\tunknown\n\
        1412\tLand Before Time III: The Time of the Great Giving (1995)\tV\tAnimation Children's\n"
            .as_bytes();

    #[test]
    fn reads_recbole_layout() {
        let dir = fixture(&[
            ("ml-100k.inter", INTER),
            ("ml-100k.user", USER),
            ("ml-100k.item", ITEM),
        ]);
        let ml = read_dir(dir.path()).expect("read recbole");
        assert_eq!(ml.layout, Layout::RecBole);
        assert_eq!(
            ml.ratings,
            [
                Rating {
                    user: 196,
                    item: 242,
                    rating: 3.0,
                    timestamp: 881_250_949
                },
                Rating {
                    user: 186,
                    item: 302,
                    rating: 4.5,
                    timestamp: 891_717_742
                },
            ]
        );
        assert_eq!(
            ml.users,
            [User {
                id: 1,
                age: 24,
                gender: "M".into(),
                occupation: "technician".into()
            }]
        );
        let ids: Vec<&str> = ml.movies.iter().map(|m| m.movie_id.as_str()).collect();
        assert_eq!(
            ids,
            [
                "toy+story+1995",
                "unkonwn",
                "les+misrables+1995",
                "land+before+time+iii+the+time+of+the+great+giving+1995"
            ]
        );
        assert_eq!(ml.movies[0].genres, ["Animation", "Children's", "Comedy"]);
        assert_eq!(ml.movies[1].year, None);
        assert_eq!(
            ml.movies[3].title,
            "Land Before Time III: The Time of the Great Giving"
        );
        assert_eq!(ml.movies[3].year, Some(1995));
    }

    #[test]
    fn recbole_errors() {
        let dir = fixture(&[
            (
                "ml-100k.inter",
                b"user_id:token\titem_id:token\trating:float\n1\t2\t3\n",
            ),
            ("ml-100k.user", USER),
            ("ml-100k.item", ITEM),
        ]);
        assert!(matches!(
            read_dir(dir.path()),
            Err(MovieLensError::MissingColumn {
                column: "timestamp",
                ..
            })
        ));

        let dir = fixture(&[("ml-100k.inter", INTER), ("ml-100k.user", USER), ("ml-100k.item", b"item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq\n1\tCaf\xe9\t1995\tDrama\n")]);
        assert!(
            matches!(read_dir(dir.path()), Err(MovieLensError::NotUtf8 { line: 2, ref path }) if path.ends_with("ml-100k.item"))
        );

        let dir = fixture(&[
            (
                "ml-100k.inter",
                b"user_id:token\titem_id:token\trating:float\ttimestamp:float\n1\t2\t3\t4\n1\t2\n",
            ),
            ("ml-100k.user", USER),
            ("ml-100k.item", ITEM),
        ]);
        let err = read_dir(dir.path()).expect_err("short row");
        assert!(
            err.to_string().contains("ml-100k.inter:3: expected 4"),
            "{err}"
        );

        let dir = fixture(&[("a.inter", INTER), ("b.inter", INTER)]);
        assert!(matches!(
            read_dir(dir.path()),
            Err(MovieLensError::AmbiguousLayout { .. })
        ));
        let dir = fixture(&[]);
        assert!(matches!(
            read_dir(dir.path()),
            Err(MovieLensError::UnknownLayout { .. })
        ));
    }
}
