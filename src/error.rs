//! The provider's error type lives with the other boundary types in `paperclip-provider-types`
//! (one home for both sides); re-exported here so the logic names it `crate::error::…`.

pub use paperclip_provider_types::{ApiError, ProviderError};
