//! The decorations reflection reads, per id and per struct member.
//!
//! Only the kinds in [`Decorations::TRACKED`] are kept, and only the first of each kind per
//! target (the first literal operand as value), so every lookup is O(1) and a decoration
//! group (deprecated but valid SPIR-V) costs at most `TRACKED.len()` entries per target it is
//! applied to, whatever the input. Groups are applied once, after the pass, when their own
//! decorations are all known; a target's own decorations take precedence over its groups'.

use std::collections::HashMap;

use spirv::Decoration;

/// Decorations of ids and of struct members, keyed by (target, decoration) with the first
/// literal operand as value.
#[derive(Debug, Default)]
pub(super) struct Decorations {
    on_id: HashMap<(u32, Decoration), Option<u32>>,
    on_member: HashMap<(u32, u32, Decoration), Option<u32>>,
    /// `OpGroupDecorate` / `OpGroupMemberDecorate` applications: (group, target, member).
    /// Applied after the pass, when the groups' own decorations are all known.
    group_uses: Vec<(u32, u32, Option<u32>)>,
}

impl Decorations {
    /// The decorations reflection reads; any other is dropped on arrival.
    const TRACKED: [Decoration; 10] = [
        Decoration::Block,
        Decoration::BufferBlock,
        Decoration::RowMajor,
        Decoration::ArrayStride,
        Decoration::MatrixStride,
        Decoration::BuiltIn,
        Decoration::NonWritable,
        Decoration::Binding,
        Decoration::DescriptorSet,
        Decoration::Offset,
    ];

    /// Records `OpDecorate %target decoration value…` unless the target already has one of
    /// that kind.
    pub(super) fn add(&mut self, target: u32, decoration: Decoration, value: Option<u32>) {
        if Self::TRACKED.contains(&decoration) {
            self.on_id.entry((target, decoration)).or_insert(value);
        }
    }

    /// Records `OpMemberDecorate %target member decoration value…` unless the member already
    /// has one of that kind.
    pub(super) fn add_member(
        &mut self,
        target: u32,
        member: u32,
        decoration: Decoration,
        value: Option<u32>,
    ) {
        if Self::TRACKED.contains(&decoration) {
            self.on_member
                .entry((target, member, decoration))
                .or_insert(value);
        }
    }

    /// Notes that `group`'s decorations apply to `target` (to its member `member`, if given);
    /// [`Decorations::apply_groups`] copies them.
    pub(super) fn add_group_use(&mut self, group: u32, target: u32, member: Option<u32>) {
        self.group_uses.push((group, target, member));
    }

    /// Copies each group's decorations onto its targets (own decorations take precedence).
    pub(super) fn apply_groups(&mut self) {
        for (group, target, member) in std::mem::take(&mut self.group_uses) {
            for decoration in Self::TRACKED {
                let Some(&value) = self.on_id.get(&(group, decoration)) else {
                    continue;
                };
                match member {
                    None => self.add(target, decoration, value),
                    Some(member) => self.add_member(target, member, decoration, value),
                }
            }
        }
    }

    /// Whether `id` carries `decoration`.
    pub(super) fn id_has(&self, id: u32, decoration: Decoration) -> bool {
        self.on_id.contains_key(&(id, decoration))
    }

    /// The literal of `id`'s `decoration`, if it has one.
    pub(super) fn id_value(&self, id: u32, decoration: Decoration) -> Option<u32> {
        self.on_id.get(&(id, decoration)).copied().flatten()
    }

    /// Whether member `member` of struct `id` carries `decoration`.
    pub(super) fn member_has(&self, id: u32, member: u32, decoration: Decoration) -> bool {
        self.on_member.contains_key(&(id, member, decoration))
    }

    /// The literal of `decoration` on member `member` of struct `id`, if it has one.
    pub(super) fn member_value(&self, id: u32, member: u32, decoration: Decoration) -> Option<u32> {
        self.on_member
            .get(&(id, member, decoration))
            .copied()
            .flatten()
    }

    /// The ids whose `decoration` has the literal `value`, in no particular order.
    pub(super) fn ids_with(
        &self,
        decoration: Decoration,
        value: u32,
    ) -> impl Iterator<Item = u32> + '_ {
        self.on_id
            .iter()
            .filter(move |(&(_, d), &v)| d == decoration && v == Some(value))
            .map(|(&(id, _), _)| id)
    }
}

#[cfg(test)]
mod tests {
    use spirv::{Decoration, Op};

    use super::super::asm::{first_word, glslc_module};
    use super::super::reflect;
    use crate::shader::Access;

    #[test]
    fn decoration_groups_apply() {
        // Replace the member NonWritable of `In` by a decoration group applied to it.
        let mut words = glslc_module((1, 0));
        let target = [
            first_word(Op::MemberDecorate, 4),
            10,
            0,
            Decoration::NonWritable as u32,
        ];
        let at = words.windows(4).position(|w| w == target).unwrap();
        words.splice(
            at..at + 4,
            [
                first_word(Op::Decorate, 3),
                35,
                Decoration::NonWritable as u32,
                first_word(Op::DecorationGroup, 2),
                35,
                first_word(Op::GroupMemberDecorate, 4),
                35,
                10,
                0,
            ],
        );
        let info = reflect(&words, "main").unwrap();
        assert_eq!(info.bindings[0].access, Access::Read);
        assert_eq!(info.bindings[1].access, Access::ReadWrite);
    }
}
