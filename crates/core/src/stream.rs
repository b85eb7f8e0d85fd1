//! Activity data stream types, with the codes the original application stored.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::Error;

/// The kind of an activity data stream, stored as a stable integer code.
///
/// ```
/// use waymark_core::stream::StreamType;
///
/// assert_eq!(StreamType::try_from(1)?, StreamType::HeartRate);
/// assert_eq!(StreamType::Pace.code(), 6);
/// assert_eq!(StreamType::Latlong.to_string(), "LATLONG");
/// assert_eq!("heart_rate".parse::<StreamType>()?, StreamType::HeartRate);
/// assert!(StreamType::try_from(8_i64).is_err());
/// # Ok::<(), waymark_core::Error>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "i64", into = "i32")]
pub enum StreamType {
    /// Heart rate, code 1.
    HeartRate = 1,
    /// Power, code 2.
    Power = 2,
    /// Cadence, code 3.
    Cadence = 3,
    /// Elevation, code 4.
    Elevation = 4,
    /// Speed, code 5.
    Speed = 5,
    /// Pace, code 6.
    Pace = 6,
    /// Latitude and longitude, code 7.
    Latlong = 7,
}

impl StreamType {
    /// Every stream type, in code order.
    pub const ALL: [StreamType; 7] = [
        Self::HeartRate,
        Self::Power,
        Self::Cadence,
        Self::Elevation,
        Self::Speed,
        Self::Pace,
        Self::Latlong,
    ];

    /// The stable integer code stored in the database.
    pub const fn code(self) -> i32 {
        self as i32
    }

    /// The original name (`HEART_RATE`, …).
    pub const fn name(self) -> &'static str {
        match self {
            Self::HeartRate => "HEART_RATE",
            Self::Power => "POWER",
            Self::Cadence => "CADENCE",
            Self::Elevation => "ELEVATION",
            Self::Speed => "SPEED",
            Self::Pace => "PACE",
            Self::Latlong => "LATLONG",
        }
    }
}

impl TryFrom<i64> for StreamType {
    type Error = Error;

    fn try_from(code: i64) -> Result<Self, Error> {
        Self::ALL
            .into_iter()
            .find(|stream| i64::from(stream.code()) == code)
            .ok_or_else(|| {
                Error::invalid(
                    "stream_type",
                    format!("unknown stream type code {code}, expected 1 to 7"),
                )
            })
    }
}

impl TryFrom<i32> for StreamType {
    type Error = Error;

    fn try_from(code: i32) -> Result<Self, Error> {
        Self::try_from(i64::from(code))
    }
}

impl From<StreamType> for i32 {
    fn from(stream: StreamType) -> i32 {
        stream.code()
    }
}

impl fmt::Display for StreamType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for StreamType {
    type Err = Error;

    /// Parses the original names, ignoring case (`"heart_rate"`, `"LATLONG"`).
    fn from_str(s: &str) -> Result<Self, Error> {
        Self::ALL
            .into_iter()
            .find(|stream| stream.name().eq_ignore_ascii_case(s.trim()))
            .ok_or_else(|| Error::invalid("stream_type", format!("unknown stream type {s:?}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_stable() {
        let codes: Vec<i32> = StreamType::ALL.iter().map(|s| s.code()).collect();
        assert_eq!(codes, [1, 2, 3, 4, 5, 6, 7]);
        for stream in StreamType::ALL {
            assert_eq!(StreamType::try_from(stream.code()).unwrap(), stream);
            assert_eq!(stream.to_string().parse::<StreamType>().unwrap(), stream);
        }
    }

    #[test]
    fn rejects_unknown_codes() {
        for bad in [0_i64, 8, -1, i64::MAX, i64::MIN] {
            assert!(matches!(
                StreamType::try_from(bad),
                Err(Error::Invalid {
                    field: "stream_type",
                    ..
                })
            ));
        }
        for bad in [0_i32, 8, -1, i32::MAX] {
            assert!(StreamType::try_from(bad).is_err());
        }
        assert!("heart rate".parse::<StreamType>().is_err());
        assert!("".parse::<StreamType>().is_err());
    }

    #[test]
    fn serde_uses_the_code() {
        assert_eq!(serde_json::to_string(&StreamType::Speed).unwrap(), "5");
        assert_eq!(
            serde_json::from_str::<StreamType>("7").unwrap(),
            StreamType::Latlong
        );
        assert!(serde_json::from_str::<StreamType>("9").is_err());
        assert_eq!("Power".parse::<StreamType>().unwrap(), StreamType::Power);
    }
}
