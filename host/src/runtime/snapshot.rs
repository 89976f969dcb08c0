//! How Wizer reads a component instance's state (memories and globals,
//! through the exports its instrumentation added) to snapshot it.

use wasmtime::Store;
use wasmtime::component::{Instance, Lift, WasmList};
use wasmtime_wizer::ComponentInstanceState;

/// An instance of the instrumented component, after its initialization.
pub struct State<'a, T: 'static> {
    /// The store that owns `instance`.
    pub store: &'a mut Store<T>,
    /// The instance.
    pub instance: Instance,
}

impl<T: Send> State<'_, T> {
    async fn call<R: Lift + 'static, R2>(
        &mut self,
        instance: &str,
        func: &str,
        then: impl FnOnce(&mut Store<T>, R) -> R2,
    ) -> R2 {
        // The instrumentation exports these functions; their absence or a
        // trap in them is a bug in Wizer, which its own API cannot report.
        let (_, inst) = self
            .instance
            .get_export(&mut *self.store, None, instance)
            .expect("wizer's instrumentation exports its instance");
        let (_, f) = self
            .instance
            .get_export(&mut *self.store, Some(&inst), func)
            .expect("wizer's instrumentation exports its functions");
        let f = self
            .instance
            .get_typed_func::<(), (R,)>(&mut *self.store, f)
            .expect("wizer's accessors have the types it asks for");
        let r = f
            .call_async(&mut *self.store, ())
            .await
            .expect("wizer's accessors do not trap")
            .0;
        then(&mut *self.store, r)
    }
}

impl<T: Send> ComponentInstanceState for State<'_, T> {
    async fn call_func_ret_list_u8(
        &mut self,
        instance: &str,
        func: &str,
        contents: impl FnOnce(&[u8]) + Send,
    ) {
        self.call(instance, func, |store, list: WasmList<u8>| {
            contents(list.as_le_slice(&store));
        })
        .await
    }

    async fn call_func_ret_s32(&mut self, instance: &str, func: &str) -> i32 {
        self.call(instance, func, |_, r| r).await
    }

    async fn call_func_ret_s64(&mut self, instance: &str, func: &str) -> i64 {
        self.call(instance, func, |_, r| r).await
    }

    async fn call_func_ret_f32(&mut self, instance: &str, func: &str) -> u32 {
        self.call(instance, func, |_, r: f32| r.to_bits()).await
    }

    async fn call_func_ret_f64(&mut self, instance: &str, func: &str) -> u64 {
        self.call(instance, func, |_, r: f64| r.to_bits()).await
    }
}
