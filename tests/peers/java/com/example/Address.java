package com.example;

import java.io.Serializable;

/** A nested POJO for the Hessian 2.0 interop tests. */
public class Address implements Serializable {
    public String city;
    public int zip;

    public Address() {}

    public Address(String city, int zip) {
        this.city = city;
        this.zip = zip;
    }
}
