//! Metric and log labels: an enum, its `ALL` list and its `as_str` names,
//! written once. A variant added to the enum is in `ALL` and has a name, or
//! the code does not compile; metrics index arrays by `as usize` on the
//! request path and must never go out of bounds.

/// Declares a label enum: `labels! { /// doc  pub enum Name { /// doc
/// Variant => "label", ... } }` gives the enum (`Clone, Copy, Debug,
/// PartialEq, Eq, Hash`, `repr(u8)`, variants numbered from 0), `ALL` in
/// declaration order, `COUNT`, and `as_str`.
macro_rules! labels {
    (
        $(#[$meta:meta])*
        $vis:vis enum $name:ident {
            $( $(#[$vmeta:meta])* $variant:ident => $label:literal ),+ $(,)?
        }
    ) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        #[repr(u8)]
        $vis enum $name {
            $( $(#[$vmeta])* $variant ),+
        }

        impl $name {
            /// Every variant, in declaration order (index = `as usize`).
            pub const ALL: [$name; [$($label),+].len()] = [$($name::$variant),+];
            /// How many variants there are.
            pub const COUNT: usize = Self::ALL.len();

            /// The label on metrics and logs.
            pub fn as_str(self) -> &'static str {
                match self {
                    $( $name::$variant => $label ),+
                }
            }
        }
    };
}

pub(crate) use labels;
