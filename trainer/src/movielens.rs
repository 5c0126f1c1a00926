//! MovieLens loaders: 100K (`u.data`, `u.user`, `u.item`) and 1M (`ratings.dat`,
//! `users.dat`, `movies.dat`), in GroupLens's original formats and Latin-1.
//!
//! Every interaction must name a user and an item its directory's user and item
//! files know: a ratings file from another release is refused at its first line
//! that disagrees rather than trained into out-of-vocabulary rows.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use crate::dataset::{Dataset, Interaction, Item, User, year_from_title};
use crate::error::{Result, TrainerError};
use crate::text_file::{Encoding, Record, TextFile};

/// The 19 genre flags of `u.item`, in the order of the 100K's `u.genre`.
pub const ML_100K_GENRES: [&str; 19] = [
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

const U_DATA: [&str; 4] = ["user id", "item id", "rating", "timestamp"];
const U_USER: [&str; 5] = ["user id", "age", "gender", "occupation", "zip code"];
const U_ITEM: [&str; 24] = [
    "movie id",
    "movie title",
    "release date",
    "video release date",
    "imdb url",
    "genre unknown",
    "genre Action",
    "genre Adventure",
    "genre Animation",
    "genre Children's",
    "genre Comedy",
    "genre Crime",
    "genre Documentary",
    "genre Drama",
    "genre Fantasy",
    "genre Film-Noir",
    "genre Horror",
    "genre Musical",
    "genre Mystery",
    "genre Romance",
    "genre Sci-Fi",
    "genre Thriller",
    "genre War",
    "genre Western",
];
const RATINGS_DAT: [&str; 4] = ["user id", "movie id", "rating", "timestamp"];
const USERS_DAT: [&str; 5] = ["user id", "gender", "age", "occupation", "zip code"];
const MOVIES_DAT: [&str; 3] = ["movie id", "title", "genres"];

/// Loads MovieLens 100K from `dir` (`u.data`, `u.user`, `u.item`).
pub fn load_movielens_100k(dir: &Path) -> Result<Dataset> {
    let items = read_u_item(&dir.join("u.item"))?;
    let users = read_u_user(&dir.join("u.user"))?;
    let interactions = read_ratings(&dir.join("u.data"), "\t", &U_DATA, &users, &items)?;
    Ok(Dataset {
        interactions,
        items,
        users,
    })
}

/// Loads MovieLens 1M from `dir` (`ratings.dat`, `users.dat`, `movies.dat`).
pub fn load_movielens_1m(dir: &Path) -> Result<Dataset> {
    let items = read_movies_dat(&dir.join("movies.dat"))?;
    let users = read_users_dat(&dir.join("users.dat"))?;
    let interactions = read_ratings(&dir.join("ratings.dat"), "::", &RATINGS_DAT, &users, &items)?;
    Ok(Dataset {
        interactions,
        items,
        users,
    })
}

/// `user item rating timestamp` lines (`u.data`, `ratings.dat`); users and items
/// must be known when their lists are non-empty.
fn read_ratings(
    path: &Path,
    separator: &str,
    names: &[&str; 4],
    users: &[User],
    items: &[Item],
) -> Result<Vec<Interaction>> {
    let file = TextFile::read(path, Encoding::Latin1)?;
    let known_users: std::collections::HashSet<&str> =
        users.iter().map(|u| u.id.as_str()).collect();
    let known_items: std::collections::HashSet<&str> =
        items.iter().map(|i| i.id.as_str()).collect();
    let mut out = Vec::new();
    for (line, text) in file.lines() {
        let record = Record::split(&file.path, line, text, separator, names)?;
        let user = record.required(0)?;
        let item = record.required(1)?;
        if !known_users.is_empty() && !known_users.contains(user) {
            return Err(record.error(0, format!("user {user} is not in the user file")));
        }
        if !known_items.is_empty() && !known_items.contains(item) {
            return Err(record.error(1, format!("item {item} is not in the item file")));
        }
        let rating: f32 = record.parse(2)?;
        if !rating.is_finite() {
            return Err(record.error(2, format!("{rating} is not a finite number")));
        }
        out.push(Interaction {
            user: user.to_string(),
            item: item.to_string(),
            rating: Some(rating),
            timestamp: Some(record.parse(3)?),
        });
    }
    if out.is_empty() {
        return Err(TrainerError::Empty("the ratings file has no interactions"));
    }
    Ok(out)
}

fn read_u_user(path: &Path) -> Result<Vec<User>> {
    let file = TextFile::read(path, Encoding::Latin1)?;
    let mut users = Vec::new();
    let mut first_line = HashMap::new();
    for (line, text) in file.lines() {
        let record = Record::split(&file.path, line, text, "|", &U_USER)?;
        let id = record.required(0)?;
        check_unique(&mut first_line, &record, 0, id)?;
        let _: u32 = record.parse(1)?;
        users.push(User {
            id: id.to_string(),
            features: features(
                &record,
                &[(1, "age"), (2, "gender"), (3, "occupation"), (4, "zip")],
            )?,
        });
    }
    Ok(users)
}

fn read_users_dat(path: &Path) -> Result<Vec<User>> {
    let file = TextFile::read(path, Encoding::Latin1)?;
    let mut users = Vec::new();
    let mut first_line = HashMap::new();
    for (line, text) in file.lines() {
        let record = Record::split(&file.path, line, text, "::", &USERS_DAT)?;
        let id = record.required(0)?;
        check_unique(&mut first_line, &record, 0, id)?;
        let _: u32 = record.parse(2)?;
        users.push(User {
            id: id.to_string(),
            features: features(
                &record,
                &[(1, "gender"), (2, "age"), (3, "occupation"), (4, "zip")],
            )?,
        });
    }
    Ok(users)
}

fn read_u_item(path: &Path) -> Result<Vec<Item>> {
    let file = TextFile::read(path, Encoding::Latin1)?;
    let mut items = Vec::new();
    let mut first_line = HashMap::new();
    for (line, text) in file.lines() {
        let record = Record::split(&file.path, line, text, "|", &U_ITEM)?;
        let id = record.required(0)?;
        check_unique(&mut first_line, &record, 0, id)?;
        let title = record.text(1);
        let mut genres = Vec::new();
        for (g, name) in ML_100K_GENRES.iter().enumerate() {
            match record.text(5 + g) {
                "1" => genres.push((*name).to_string()),
                "0" => {}
                other => return Err(record.error(5 + g, format!("{other:?} is not 0 or 1"))),
            }
        }
        // The release date is "01-Jan-1995"; the title's year is what TFRS reads.
        let date = record.text(2);
        let year = year_from_title(title).or_else(|| {
            date.rsplit('-')
                .next()
                .filter(|y| y.len() == 4)
                .and_then(|y| y.parse().ok())
        });
        items.push(Item {
            id: id.to_string(),
            title: (!title.is_empty()).then(|| title.to_string()),
            year,
            genres,
        });
    }
    Ok(items)
}

fn read_movies_dat(path: &Path) -> Result<Vec<Item>> {
    let file = TextFile::read(path, Encoding::Latin1)?;
    let mut items = Vec::new();
    let mut first_line = HashMap::new();
    for (line, text) in file.lines() {
        let record = Record::split(&file.path, line, text, "::", &MOVIES_DAT)?;
        let id = record.required(0)?;
        check_unique(&mut first_line, &record, 0, id)?;
        let title = record.required(1)?;
        let genres = record
            .text(2)
            .split('|')
            .filter(|g| !g.is_empty())
            .map(str::to_string)
            .collect();
        items.push(Item {
            id: id.to_string(),
            title: Some(title.to_string()),
            year: year_from_title(title),
            genres,
        });
    }
    Ok(items)
}

fn features(record: &Record<'_>, fields: &[(usize, &str)]) -> Result<BTreeMap<String, String>> {
    fields
        .iter()
        .map(|&(i, name)| Ok((name.to_string(), record.required(i)?.to_string())))
        .collect()
}

pub(crate) fn check_unique<'a>(
    first_line: &mut HashMap<&'a str, usize>,
    record: &Record<'a>,
    field: usize,
    value: &'a str,
) -> Result<()> {
    if let Some(&first) = first_line.get(value) {
        return Err(TrainerError::Duplicate {
            path: record.path.to_path_buf(),
            line: record.line,
            field: record.name(field).to_string(),
            value: value.to_string(),
            first_line: first,
        });
    }
    first_line.insert(value, record.line);
    Ok(())
}
