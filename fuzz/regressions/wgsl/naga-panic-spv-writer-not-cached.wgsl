fn takes_ptr(p: ptr<function, i32>) {
}
fn argument_nested_x3_(v_2: ptr<function, array<array<array<i32, 4>, 4>, 4>>, i_4: u32, j_1: u32) {
    takes_ptr((&(*v_2)[i_4][0][j_1]));
}
