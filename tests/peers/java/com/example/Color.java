package com.example;

/** An enum for the Hessian 2.0 interop tests. */
public enum Color {
    RED,
    GREEN
}
