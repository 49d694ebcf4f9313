//! Encoding and segment counts against a model, on random texts over GSM-7,
//! its extension table, other BMP characters and emoji: the splitter
//! (src/segments.rs) and the database's generated columns
//! (migrations/0011_segments.sql) must both agree with it.

mod common;

use common::TestDb;
use dbrouter::segments::{self, Encoding};
use proptest::prelude::*;

/// The model, written from the rule and nothing else: an encoding, a cost
/// per character, and parts cut by taking the longest prefix that fits.
fn model(text: &str) -> (&'static str, usize) {
    const GSM: &str = "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?\
                       ¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà";
    const EXT: &str = "\u{c}^{}\\[~]|€";
    let gsm = text.chars().all(|c| GSM.contains(c) || EXT.contains(c));
    let cost = |c: char| -> usize {
        match (gsm, EXT.contains(c), u32::from(c) > 0xFFFF) {
            (true, true, _) | (false, _, true) => 2,
            _ => 1,
        }
    };
    let (single, multi) = if gsm { (160, 153) } else { (70, 67) };
    let chars: Vec<char> = text.chars().collect();
    let total: usize = chars.iter().map(|&c| cost(c)).sum();
    let name = if gsm { "gsm7" } else { "ucs2" };
    if total <= single {
        return (name, 1);
    }
    let mut parts = 0;
    let mut rest = &chars[..];
    while !rest.is_empty() {
        let mut take = 0;
        let mut used = 0;
        while take < rest.len() && used + cost(rest[take]) <= multi {
            used += cost(rest[take]);
            take += 1;
        }
        rest = &rest[take..];
        parts += 1;
    }
    (name, parts)
}

/// Texts mostly of one kind of character, so long GSM-7 texts and long
/// UCS-2 texts both come up, with the edges (an escape pair or an emoji
/// across a part boundary) among them.
fn text() -> impl Strategy<Value = String> {
    let plain = prop::sample::select("abcXYZ 019.@£Δ\nÆé-_$'".chars().collect::<Vec<_>>());
    let ext = prop::sample::select("€[]{}^~|\\\u{c}".chars().collect::<Vec<_>>());
    let bmp = prop::sample::select("жПדع中“”\tç`".chars().collect::<Vec<_>>());
    let astral = prop::sample::select("😀🎉𝄞🇹".chars().collect::<Vec<_>>());
    (0u32..4, 0usize..420).prop_flat_map(move |(mix, len)| {
        let c = match mix {
            0 => prop_oneof![9 => plain.clone(), 1 => ext.clone()].boxed(),
            1 => prop_oneof![6 => plain.clone(), 4 => ext.clone()].boxed(),
            2 => prop_oneof![5 => plain.clone(), 3 => bmp.clone(), 2 => astral.clone()].boxed(),
            _ => prop_oneof![99 => plain.clone(), 1 => astral.clone()].boxed(),
        };
        prop::collection::vec(c, len).prop_map(|v| v.into_iter().collect::<String>())
    })
}

#[test]
fn the_splitter_and_the_database_count_as_the_model() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let db = rt.block_on(TestDb::new());
    let config = ProptestConfig {
        cases: 64,
        failure_persistence: None,
        ..ProptestConfig::default()
    };
    proptest!(config, |(texts in prop::collection::vec(text(), 1..16))| {
        let (encodings, counts): (Vec<String>, Vec<i32>) = rt.block_on(
            sqlx::query_as::<_, (String, i32)>(
                "SELECT dbrouter.encoding(t), dbrouter.segments(t)
                   FROM unnest($1::text[]) WITH ORDINALITY AS x(t, i) ORDER BY i",
            )
            .bind(&texts)
            .fetch_all(&db.pool),
        )
        .unwrap()
        .into_iter()
        .unzip();
        for (i, t) in texts.iter().enumerate() {
            let (enc, parts) = model(t);
            let split = segments::split(t);
            prop_assert_eq!(split.concat(), t.clone(), "the parts join back");
            prop_assert_eq!(split.len(), parts, "splitter, {:?}", t);
            prop_assert_eq!(segments::encoding(t).as_str(), enc, "encoding, {:?}", t);
            prop_assert_eq!(&encodings[i], enc, "database encoding, {:?}", t);
            prop_assert_eq!(counts[i] as usize, parts, "database segments, {:?}", t);
        }
    });
    rt.block_on(db.drop());
}

/// Every message gets both columns, whoever writes it; the broadcast
/// preview can sum them.
#[tokio::test]
async fn every_message_carries_its_encoding_and_segments() {
    let db = TestDb::new().await;
    db.backend("gw", "database", serde_json::json!({}), None)
        .await;
    let long = "x".repeat(161);
    db.exec(&format!(
        "INSERT INTO dbrouter.outbox (backend, identity, text)
         VALUES ('gw', '+1', 'hello'), ('gw', '+2', '{long}'), ('gw', '+3', 'Привет 😀')"
    ))
    .await;
    let msg = db
        .broadcast("gw", &["+4".into(), "+5".into()], "€5 [sale]")
        .await;
    assert_eq!(
        db.scalar_str(
            "SELECT string_agg(encoding || ':' || segments, ',' ORDER BY id) FROM dbrouter.messages"
        )
        .await,
        "gsm7:1,gsm7:2,ucs2:1,gsm7:1"
    );
    assert_eq!(
        db.scalar_i64(&format!(
            "SELECT sum(m.segments) FROM dbrouter.transmissions t
               JOIN dbrouter.messages m ON m.id = t.message_id WHERE m.id = {msg}"
        ))
        .await,
        2
    );
    assert_eq!(segments::encoding("€5 [sale]"), Encoding::Gsm7);
    db.drop().await;
}
