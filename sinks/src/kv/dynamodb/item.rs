//! A view's value as a DynamoDB item and back: each value column a typed
//! attribute (numbers `N`, text `S`, booleans `BOOL`, lists `L`, objects
//! `M`), beside the key and the sink's own attributes.

use std::collections::HashMap;

use aws_sdk_dynamodb::types::AttributeValue;
use serde_json::Value as Json;

/// The version a value was written with.
pub(crate) const VERSION: &str = "_version";
/// When it expires, in seconds since the epoch: the attribute to give
/// DynamoDB's time to live.
pub(crate) const EXPIRES: &str = "_expires";
/// Marks a delete remembered for its version (a tombstone).
pub(crate) const DELETED: &str = "_deleted";

/// The largest item DynamoDB stores.
pub(crate) const MAX_ITEM_BYTES: usize = 400 * 1024;

/// The attributes of a JSON value.
pub(crate) fn attribute(value: Json) -> AttributeValue {
    match value {
        Json::Null => AttributeValue::Null(true),
        Json::Bool(b) => AttributeValue::Bool(b),
        Json::Number(n) => AttributeValue::N(n.to_string()),
        Json::String(s) => AttributeValue::S(s),
        Json::Array(items) => AttributeValue::L(items.into_iter().map(attribute).collect()),
        Json::Object(fields) => {
            AttributeValue::M(fields.into_iter().map(|(k, v)| (k, attribute(v))).collect())
        }
    }
}

/// The JSON value of an attribute.
pub(crate) fn json(attribute: &AttributeValue) -> Json {
    match attribute {
        AttributeValue::Bool(b) => Json::Bool(*b),
        AttributeValue::N(n) => serde_json::from_str(n).unwrap_or_else(|_| Json::String(n.clone())),
        AttributeValue::S(s) => Json::String(s.clone()),
        AttributeValue::L(items) => Json::Array(items.iter().map(json).collect()),
        AttributeValue::M(fields) => {
            Json::Object(fields.iter().map(|(k, v)| (k.clone(), json(v))).collect())
        }
        AttributeValue::Ss(items) => Json::Array(items.iter().cloned().map(Json::String).collect()),
        AttributeValue::Ns(items) => Json::Array(
            items
                .iter()
                .map(|n| json(&AttributeValue::N(n.clone())))
                .collect(),
        ),
        _ => Json::Null,
    }
}

/// The value columns of an item: all but the key and the sink's own, by
/// name (DynamoDB keeps no order).
pub(crate) fn value_of(item: &HashMap<String, AttributeValue>, key_attribute: &str) -> Json {
    let mut names: Vec<&String> = item
        .keys()
        .filter(|name| !is_own(name, key_attribute))
        .collect();
    names.sort();
    Json::Object(
        names
            .into_iter()
            .map(|name| (name.clone(), json(&item[name])))
            .collect(),
    )
}

/// Whether `name` is the key's or one of the sink's own attributes.
pub(crate) fn is_own(name: &str, key_attribute: &str) -> bool {
    name == key_attribute || name == VERSION || name == EXPIRES || name == DELETED
}
