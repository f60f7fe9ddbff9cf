//! `key_bucket(key, buckets)`: a key's bucket in `0..buckets`, by a hash
//! fixed once and for all, so that a rule like
//! `key_bucket(customer, 100) < 10` picks the same customers in every
//! process, after every restart and in every release of Flumen. Raising
//! the 10 only adds customers to those picked: none leaves. A strangler's
//! traffic split and an A/B test rely on that.
//!
//! The hash is FNV-1a (64 bits) of the key's text as SQL casts it to a
//! string (`42` is hashed as `"42"`), reduced modulo `buckets`. A null key
//! has a null bucket.

use std::hash::Hasher;
use std::sync::Arc;

use arrow::array::{AsArray, Int64Array};
use arrow::datatypes::DataType;
use datafusion::common::{Result, ScalarValue, exec_err, plan_err};
use datafusion::logical_expr::{
    ColumnarValue, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, Volatility,
};

/// The `key_bucket` SQL function.
pub fn key_bucket() -> ScalarUDF {
    ScalarUDF::from(KeyBucket {
        signature: Signature::any(2, Volatility::Immutable),
    })
}

/// The bucket of one key's text.
pub fn bucket_of(key: &str, buckets: u64) -> u64 {
    let mut hasher = fnv::FnvHasher::default();
    hasher.write(key.as_bytes());
    hasher.finish() % buckets
}

#[derive(Debug, PartialEq, Eq, Hash)]
struct KeyBucket {
    signature: Signature,
}

impl ScalarUDFImpl for KeyBucket {
    fn name(&self) -> &str {
        "key_bucket"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, arguments: &[DataType]) -> Result<DataType> {
        if !arguments[1].is_integer() {
            return plan_err!(
                "key_bucket(key, buckets) takes a whole number of buckets, not {}",
                arguments[1]
            );
        }
        Ok(DataType::Int64)
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let [key, buckets] = args.args.as_slice() else {
            return exec_err!("key_bucket(key, buckets) takes two arguments");
        };
        let buckets = match buckets {
            ColumnarValue::Scalar(value) => match value.cast_to(&DataType::Int64)? {
                ScalarValue::Int64(Some(n)) if n > 0 => n as u64,
                _ => return exec_err!("key_bucket's buckets must be a positive number"),
            },
            ColumnarValue::Array(_) => {
                return exec_err!("key_bucket's buckets must be a constant, e.g. 100");
            }
        };
        let keys = key.to_array(args.number_rows)?;
        let text = arrow::compute::cast(&keys, &DataType::Utf8)?;
        let bucketed: Int64Array = text
            .as_string::<i32>()
            .iter()
            .map(|key| key.map(|key| bucket_of(key, buckets) as i64))
            .collect();
        Ok(ColumnarValue::Array(Arc::new(bucketed)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_fnv_1a_of_the_text_and_fixed_for_good() {
        // FNV-1a 64 of "" is its offset basis; of "a", a published value.
        assert_eq!(bucket_of("", u64::MAX), 0xcbf29ce484222325);
        assert_eq!(bucket_of("a", u64::MAX), 0xaf63dc4c8601ec8c);
        // Pinned (and checked by hand with another FNV-1a): a change here
        // would move customers between a strangler's services.
        let buckets: Vec<u64> = ["c1", "c2", "c3", "c42"]
            .iter()
            .map(|k| bucket_of(k, 100))
            .collect();
        assert_eq!(buckets, [57, 24, 35, 8]);
    }
}
