//! The `list` generator: members written out in the set itself.

use super::{Inventory, Member};
use crate::api::ListGenerator;

pub(super) fn members(list: &ListGenerator) -> Inventory {
    Inventory::members(
        list.elements
            .iter()
            .map(|element| Member {
                name: element.name.clone(),
                labels: element.labels.clone(),
                aliases: element.aliases.clone(),
                values: element
                    .values
                    .iter()
                    .map(|(key, value)| (format!("values.{key}"), value.clone()))
                    .collect(),
            })
            .collect(),
    )
}
