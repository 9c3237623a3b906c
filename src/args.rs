//! Launch arguments: a tuple of buffers (and optionally push constants) → bindings.
//!
//! The i-th buffer argument is bound to `@group(0) @binding(i)`. Shared borrows (`&[T]`,
//! `&Vec<T>`, `&[T; N]`, `&Managed<T>`) may only go to bindings the kernel reads; mutable
//! borrows may go to either. Because the borrows last for the whole synchronous launch, the
//! borrow checker guarantees that no other code reads written data or writes read data while
//! its pages move — the runtime relies on that instead of locking user memory.
//!
//! ```
//! # use vkhmm::Push;
//! #[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
//! #[repr(C)]
//! struct Params { a: f32, n: u32 }
//! let x = vec![1.0f32; 4];
//! let mut y = vec![0.0f32; 4];
//! let p = Params { a: 2.0, n: 4 };
//! let _args = (&x, &mut y, Push(&p)); // binding 0 read, binding 1 read_write, push constants
//! ```

use bytemuck::Pod;

use crate::managed::Managed;

/// Push constants for a launch: `Push(&params)` anywhere in the argument tuple.
#[derive(Debug, Clone, Copy)]
pub struct Push<'a, P: Pod>(pub &'a P);

/// One buffer argument as the runtime sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct BufferArg {
    /// Start address.
    pub addr: usize,
    /// Length in bytes.
    pub len: usize,
    /// The caller lent it mutably (`&mut`): the kernel may write it.
    pub mutable: bool,
}

/// Collects the arguments of one launch.
#[derive(Debug, Default)]
pub(crate) struct ArgList {
    pub buffers: Vec<BufferArg>,
    pub push: Vec<u8>,
    pub push_count: usize,
}

impl ArgList {
    fn buffer<T>(&mut self, s: &[T], mutable: bool) {
        self.buffers.push(BufferArg {
            addr: s.as_ptr() as usize,
            len: std::mem::size_of_val(s),
            mutable,
        });
    }
}

mod sealed {
    pub trait Sealed {}
}

/// A single launch argument: a buffer borrow or [`Push`]. Implemented for `&[T]`,
/// `&mut [T]`, `&Vec<T>`, `&mut Vec<T>`, `&[T; N]`, `&mut [T; N]`, `&Managed<T>`,
/// `&mut Managed<T>` (with `T: bytemuck::Pod`) and `Push<P>`.
pub trait Arg: sealed::Sealed {
    #[doc(hidden)]
    #[allow(private_interfaces)]
    fn collect(&self, out: &mut ArgList);
}

/// The arguments of a launch: one [`Arg`], a tuple of up to 12, `()`, or [`DynArgs`].
pub trait KernelArgs {
    #[doc(hidden)]
    #[allow(private_interfaces)]
    fn collect(&self, out: &mut ArgList);
}

macro_rules! buffer_arg {
    ($mutable:literal, $($ty:ty),+) => {$(
        impl<T: Pod> sealed::Sealed for $ty {}
        impl<T: Pod> Arg for $ty {
            #[allow(private_interfaces)]
            fn collect(&self, out: &mut ArgList) {
                out.buffer(&self[..], $mutable);
            }
        }
    )+};
}
buffer_arg!(false, &[T], &Vec<T>, &Managed<T>);
buffer_arg!(true, &mut [T], &mut Vec<T>, &mut Managed<T>);

impl<T: Pod, const N: usize> sealed::Sealed for &[T; N] {}
impl<T: Pod, const N: usize> Arg for &[T; N] {
    #[allow(private_interfaces)]
    fn collect(&self, out: &mut ArgList) {
        out.buffer(&self[..], false);
    }
}
impl<T: Pod, const N: usize> sealed::Sealed for &mut [T; N] {}
impl<T: Pod, const N: usize> Arg for &mut [T; N] {
    #[allow(private_interfaces)]
    fn collect(&self, out: &mut ArgList) {
        out.buffer(&self[..], true);
    }
}

impl<P: Pod> sealed::Sealed for Push<'_, P> {}
impl<P: Pod> Arg for Push<'_, P> {
    #[allow(private_interfaces)]
    fn collect(&self, out: &mut ArgList) {
        out.push.extend_from_slice(bytemuck::bytes_of(self.0));
        out.push_count += 1;
    }
}

/// Push constants as raw bytes, for a layout known only at run time (from a language
/// binding, say): exactly the kernel's push-constant block, as [`Push`] would give it.
#[derive(Debug, Clone, Copy)]
pub struct PushBytes<'a>(pub &'a [u8]);

impl sealed::Sealed for PushBytes<'_> {}
impl Arg for PushBytes<'_> {
    #[allow(private_interfaces)]
    fn collect(&self, out: &mut ArgList) {
        out.push.extend_from_slice(self.0);
        out.push_count += 1;
    }
}

/// Arguments whose number is known only at run time: `DynArgs(&[&x, &mut y, &PushBytes(p)])`,
/// in binding order as a tuple would give them.
#[derive(Clone, Copy)]
pub struct DynArgs<'a>(pub &'a [&'a dyn Arg]);

impl std::fmt::Debug for DynArgs<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "DynArgs({} arguments)", self.0.len())
    }
}

impl KernelArgs for DynArgs<'_> {
    #[allow(private_interfaces)]
    fn collect(&self, out: &mut ArgList) {
        for a in self.0 {
            a.collect(out);
        }
    }
}

impl<A: Arg> KernelArgs for A {
    #[allow(private_interfaces)]
    fn collect(&self, out: &mut ArgList) {
        Arg::collect(self, out);
    }
}

impl KernelArgs for () {
    #[allow(private_interfaces)]
    fn collect(&self, _: &mut ArgList) {}
}

macro_rules! tuple_args {
    ($($name:ident),+) => {
        impl<$($name: Arg),+> KernelArgs for ($($name,)+) {
            #[allow(private_interfaces, non_snake_case)]
            fn collect(&self, out: &mut ArgList) {
                let ($($name,)+) = self;
                $(Arg::collect($name, out);)+
            }
        }
    };
}
tuple_args!(A);
tuple_args!(A, B);
tuple_args!(A, B, C);
tuple_args!(A, B, C, D);
tuple_args!(A, B, C, D, E);
tuple_args!(A, B, C, D, E, F);
tuple_args!(A, B, C, D, E, F, G);
tuple_args!(A, B, C, D, E, F, G, H);
tuple_args!(A, B, C, D, E, F, G, H, I);
tuple_args!(A, B, C, D, E, F, G, H, I, J);
tuple_args!(A, B, C, D, E, F, G, H, I, J, K);
tuple_args!(A, B, C, D, E, F, G, H, I, J, K, L);

/// Collects `args` into buffers and push-constant bytes.
pub(crate) fn collect(args: &impl KernelArgs) -> ArgList {
    let mut out = ArgList::default();
    args.collect(&mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
    #[repr(C)]
    struct P2 {
        a: f32,
        n: u32,
    }

    #[test]
    fn tuple_order_access_and_push() {
        let x = vec![1.0f32; 3];
        let mut y = [0u32; 5];
        let mut z = [0u8; 7];
        let p = P2 { a: 2.0, n: 9 };
        let l = collect(&(&x, Push(&p), &mut y[1..], &mut z));
        assert_eq!(l.buffers.len(), 3);
        assert_eq!(
            l.buffers[0],
            BufferArg {
                addr: x.as_ptr() as usize,
                len: 12,
                mutable: false
            }
        );
        assert_eq!(
            l.buffers[1],
            BufferArg {
                addr: y[1..].as_ptr() as usize,
                len: 16,
                mutable: true
            }
        );
        assert_eq!(l.buffers[2].len, 7);
        assert!(l.buffers[2].mutable);
        assert_eq!(l.push, bytemuck::bytes_of(&p));
        assert_eq!(l.push_count, 1);
    }

    #[test]
    fn dynamic_arguments_collect_as_a_tuple_does() {
        let x = vec![1.0f32; 3];
        let mut y = [0u32; 5];
        let p = P2 { a: 2.0, n: 9 };
        let bytes = bytemuck::bytes_of(&p);
        let tuple = collect(&(&x, &mut y[..], Push(&p)));
        let (xr, yr) = (&x, &mut y[..]);
        let list: [&dyn Arg; 3] = [&xr, &yr, &PushBytes(bytes)];
        let dynamic = collect(&DynArgs(&list));
        assert_eq!(dynamic.buffers, tuple.buffers);
        assert_eq!((dynamic.push, dynamic.push_count), (tuple.push, 1));
    }

    #[test]
    fn single_and_empty() {
        let x = [1u32, 2];
        assert_eq!(collect(&&x[..]).buffers.len(), 1);
        assert_eq!(collect(&()).buffers.len(), 0);
        let mut v: Vec<u32> = Vec::new();
        let l = collect(&(&mut v,));
        assert_eq!(l.buffers[0].len, 0);
    }
}
