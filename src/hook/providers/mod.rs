//! One parser per Git host or registry, each producing a [`HookEvent`](super::event::HookEvent).
