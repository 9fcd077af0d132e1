//! Reads JSON written by Go's `encoding/json` into serde types that expect every field.
//!
//! containerd's CRI plugin reports a pod's and a container's original configs (verbose
//! `PodSandboxStatus` / `ContainerStatus`, `info["info"].config`) as Go marshals the CRI
//! structs: field names as in the proto, enums as numbers, and every zero value left out
//! (`omitempty`). k8s-cri's types derive serde without `#[serde(default)]`, so a missing
//! string, list or nested message would fail plain `serde_json`. [`from_value`] reads them
//! like protobuf does: a missing or `null` field is its zero value.

use serde::de::value::{Error as DeError, StrDeserializer};
use serde::de::{
    self, DeserializeOwned, DeserializeSeed, Deserializer, IntoDeserializer, MapAccess, SeqAccess,
    Visitor,
};
use serde::forward_to_deserialize_any;
use serde_json::Value;

/// `T` from Go-marshalled JSON, absent fields taken as zero values.
pub fn from_value<T: DeserializeOwned>(v: &Value) -> Result<T, String> {
    T::deserialize(Lenient(v)).map_err(|e| e.to_string())
}

/// A JSON value whose missing struct fields (and nulls) deserialize as zero values.
struct Lenient<'a>(&'a Value);

/// The zero value of whatever is asked for: `false`, `0`, `""`, empty list or map, `None`,
/// a struct of zero fields.
struct Zero;

/// Typed requests on `null` become zero values; the rest is self-describing.
macro_rules! null_is_zero {
    ($($method:ident),*) => {$(
        fn $method<V: Visitor<'de>>(self, v: V) -> Result<V::Value, DeError> {
            match self.0 {
                Value::Null => Zero.$method(v),
                _ => self.deserialize_any(v),
            }
        }
    )*};
}

impl<'de> Deserializer<'de> for Lenient<'_> {
    type Error = DeError;

    fn deserialize_any<V: Visitor<'de>>(self, v: V) -> Result<V::Value, DeError> {
        match self.0 {
            Value::Null => v.visit_unit(),
            Value::Bool(b) => v.visit_bool(*b),
            Value::Number(n) => {
                if let Some(u) = n.as_u64() {
                    v.visit_u64(u)
                } else if let Some(i) = n.as_i64() {
                    v.visit_i64(i)
                } else {
                    v.visit_f64(n.as_f64().unwrap_or_default())
                }
            }
            Value::String(s) => v.visit_str(s),
            Value::Array(a) => v.visit_seq(Seq(a.iter())),
            Value::Object(m) => v.visit_map(Entries {
                iter: m.iter(),
                value: None,
            }),
        }
    }

    fn deserialize_option<V: Visitor<'de>>(self, v: V) -> Result<V::Value, DeError> {
        match self.0 {
            Value::Null => v.visit_none(),
            _ => v.visit_some(self),
        }
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        fields: &'static [&'static str],
        v: V,
    ) -> Result<V::Value, DeError> {
        match self.0 {
            Value::Object(m) => v.visit_map(Fields {
                fields: fields.iter(),
                value: None,
                object: Some(m),
            }),
            Value::Null => Zero.deserialize_struct(name, fields, v),
            other => Err(de::Error::custom(format!(
                "expected an object for {name}, found {other}"
            ))),
        }
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        v: V,
    ) -> Result<V::Value, DeError> {
        v.visit_newtype_struct(self)
    }

    null_is_zero!(
        deserialize_bool,
        deserialize_i8,
        deserialize_i16,
        deserialize_i32,
        deserialize_i64,
        deserialize_u8,
        deserialize_u16,
        deserialize_u32,
        deserialize_u64,
        deserialize_f32,
        deserialize_f64,
        deserialize_str,
        deserialize_string,
        deserialize_bytes,
        deserialize_byte_buf,
        deserialize_seq,
        deserialize_map
    );

    forward_to_deserialize_any! {
        i128 u128 char unit unit_struct tuple tuple_struct enum identifier ignored_any
    }
}

struct Seq<'a>(std::slice::Iter<'a, Value>);

impl<'de> SeqAccess<'de> for Seq<'_> {
    type Error = DeError;
    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, DeError> {
        self.0
            .next()
            .map(|v| seed.deserialize(Lenient(v)))
            .transpose()
    }
}

/// A map's entries (a `map<string, string>` field).
struct Entries<'a> {
    iter: serde_json::map::Iter<'a>,
    value: Option<&'a Value>,
}

impl<'de> MapAccess<'de> for Entries<'_> {
    type Error = DeError;
    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, DeError> {
        let Some((k, v)) = self.iter.next() else {
            return Ok(None);
        };
        self.value = Some(v);
        let key: StrDeserializer<DeError> = k.as_str().into_deserializer();
        seed.deserialize(key).map(Some)
    }
    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, DeError> {
        match self.value.take() {
            Some(v) => seed.deserialize(Lenient(v)),
            None => Err(de::Error::custom("a value without a key")),
        }
    }
}

/// A struct's fields, each from the object or a zero value when absent. Keys the type does
/// not know are left out (newer CRI versions add fields).
struct Fields<'a> {
    fields: std::slice::Iter<'static, &'static str>,
    value: Option<Option<&'a Value>>,
    object: Option<&'a serde_json::Map<String, Value>>,
}

impl<'de> MapAccess<'de> for Fields<'_> {
    type Error = DeError;
    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, DeError> {
        let Some(f) = self.fields.next() else {
            return Ok(None);
        };
        self.value = Some(self.object.and_then(|m| m.get(*f)));
        let key: StrDeserializer<DeError> = (*f).into_deserializer();
        seed.deserialize(key).map(Some)
    }
    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, DeError> {
        match self.value.take() {
            Some(Some(v)) => seed.deserialize(Lenient(v)),
            Some(None) => seed.deserialize(Zero),
            None => Err(de::Error::custom("a value without a key")),
        }
    }
}

struct Empty;

impl<'de> SeqAccess<'de> for Empty {
    type Error = DeError;
    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        _seed: T,
    ) -> Result<Option<T::Value>, DeError> {
        Ok(None)
    }
}

impl<'de> MapAccess<'de> for Empty {
    type Error = DeError;
    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        _seed: K,
    ) -> Result<Option<K::Value>, DeError> {
        Ok(None)
    }
    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, _seed: V) -> Result<V::Value, DeError> {
        Err(de::Error::custom("a value without a key"))
    }
}

/// Typed requests answered with a fixed zero value.
macro_rules! zero_is {
    ($($method:ident => $visit:ident($zero:expr)),*) => {$(
        fn $method<V: Visitor<'de>>(self, v: V) -> Result<V::Value, DeError> {
            v.$visit($zero)
        }
    )*};
}

impl<'de> Deserializer<'de> for Zero {
    type Error = DeError;

    fn deserialize_any<V: Visitor<'de>>(self, v: V) -> Result<V::Value, DeError> {
        v.visit_unit()
    }
    zero_is!(
        deserialize_bool => visit_bool(false),
        deserialize_i8 => visit_i64(0),
        deserialize_i16 => visit_i64(0),
        deserialize_i32 => visit_i64(0),
        deserialize_i64 => visit_i64(0),
        deserialize_u8 => visit_u64(0),
        deserialize_u16 => visit_u64(0),
        deserialize_u32 => visit_u64(0),
        deserialize_u64 => visit_u64(0),
        deserialize_f32 => visit_f64(0.0),
        deserialize_f64 => visit_f64(0.0),
        deserialize_str => visit_str(""),
        deserialize_string => visit_str(""),
        deserialize_bytes => visit_bytes(&[]),
        deserialize_byte_buf => visit_bytes(&[])
    );
    fn deserialize_option<V: Visitor<'de>>(self, v: V) -> Result<V::Value, DeError> {
        v.visit_none()
    }
    fn deserialize_seq<V: Visitor<'de>>(self, v: V) -> Result<V::Value, DeError> {
        v.visit_seq(Empty)
    }
    fn deserialize_map<V: Visitor<'de>>(self, v: V) -> Result<V::Value, DeError> {
        v.visit_map(Empty)
    }
    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        fields: &'static [&'static str],
        v: V,
    ) -> Result<V::Value, DeError> {
        v.visit_map(Fields {
            fields: fields.iter(),
            value: None,
            object: None,
        })
    }
    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        v: V,
    ) -> Result<V::Value, DeError> {
        v.visit_newtype_struct(self)
    }

    forward_to_deserialize_any! {
        i128 u128 char unit unit_struct tuple tuple_struct enum identifier ignored_any
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_cri::v1 as cri;
    use serde_json::json;

    #[test]
    fn pod_config_as_containerd_reports_it() {
        // containerd 1.6's verbose PodSandboxStatus: info["info"]["config"] (trimmed).
        let v = json!({
            "metadata": {"name": "web", "uid": "u-1", "namespace": "shop"},
            "hostname": "web",
            "log_directory": "/var/log/pods/shop_web_u-1",
            "labels": {"app": "web"},
            "linux": {
                "cgroup_parent": "/kubepods/pod-u-1",
                "security_context": {"namespace_options": {"pid": 1}}
            },
            "unknown_newer_field": {"x": 1}
        });
        let c: cri::PodSandboxConfig = from_value(&v).unwrap();
        let m = c.metadata.as_ref().unwrap();
        assert_eq!((m.name.as_str(), m.namespace.as_str()), ("web", "shop"));
        assert_eq!(m.attempt, 0);
        assert_eq!(c.labels["app"], "web");
        assert!(c.annotations.is_empty() && c.port_mappings.is_empty());
        assert!(c.dns_config.is_none());
        let l = c.linux.as_ref().unwrap();
        assert_eq!(l.cgroup_parent, "/kubepods/pod-u-1");
        let ns = l
            .security_context
            .as_ref()
            .and_then(|s| s.namespace_options.as_ref())
            .unwrap();
        assert_eq!(ns.pid, cri::NamespaceMode::Container as i32);
        assert_eq!(ns.network, cri::NamespaceMode::Pod as i32);
    }

    #[test]
    fn container_config_with_nulls_and_lists() {
        let v = json!({
            "metadata": {"name": "svc"},
            "image": {"image": "localhost/ums/counter:1"},
            "command": ["/bin/sh", "-c", "x"],
            "envs": [{"key": "A", "value": "1"}, {"key": "B"}],
            "mounts": null,
            "linux": {"resources": {"memory_limit_in_bytes": 67108864}},
            "log_path": "svc.log"
        });
        let c: cri::ContainerConfig = from_value(&v).unwrap();
        assert_eq!(c.command.len(), 3);
        assert_eq!(c.envs[1].value, "");
        assert!(c.mounts.is_empty() && c.args.is_empty());
        assert_eq!(
            c.linux
                .as_ref()
                .and_then(|l| l.resources.as_ref())
                .map(|r| r.memory_limit_in_bytes),
            Some(67108864)
        );
        // Round trip through serde_json (what goes over the wire between coordinators).
        let back: cri::ContainerConfig =
            serde_json::from_value(serde_json::to_value(&c).unwrap()).unwrap();
        assert_eq!(back, c);
        assert!(from_value::<cri::ContainerConfig>(&json!({"metadata": 3})).is_err());
    }
}
