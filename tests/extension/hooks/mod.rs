//! One file per hook of the Extension Server, as in `src/extension/hooks/`.

mod other;
mod post_endpoints;
mod post_route;
mod post_translate;
