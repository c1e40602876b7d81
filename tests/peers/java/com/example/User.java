package com.example;

import java.io.Serializable;
import java.util.List;
import java.util.Map;

/** A POJO with a long, a string, a list, a map, a nested object and an int (Hessian interop). */
public class User implements Serializable {
    public long id;
    public String name;
    public List<String> tags;
    public Map<String, Integer> attrs;
    public Address addr;
    public int age;
}
