import com.caucho.hessian.io.Hessian2Input;
import com.caucho.hessian.io.Hessian2Output;
import com.example.Address;
import com.example.Color;
import com.example.User;
import java.io.ByteArrayInputStream;
import java.io.ByteArrayOutputStream;
import java.lang.reflect.Array;
import java.lang.reflect.Field;
import java.lang.reflect.Modifier;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.security.MessageDigest;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.Date;
import java.util.HashMap;
import java.util.IdentityHashMap;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.TreeMap;

/**
 * Java oracle for metamesh's Hessian 2.0 codec, using Caucho's Hessian2Input/Hessian2Output.
 *
 * <p>{@code read FILE...} decodes each file and prints {@code NAME<TAB>canonical text}; the
 * canonical form names Java types (int:, long:, double bits, class names, array component types)
 * and marks a container already printed (same identity) as {@code ^N}. {@code write DIR} writes
 * one Hessian 2.0 file per named case for metamesh to decode.
 */
public class HessianOracle {
    public static void main(String[] args) throws Exception {
        if (args[0].equals("read")) {
            for (int i = 1; i < args.length; i++) {
                Path path = Path.of(args[i]);
                String name = path.getFileName().toString().replaceAll("\\.bin$", "");
                String text;
                try {
                    byte[] data = Files.readAllBytes(path);
                    Hessian2Input in = new Hessian2Input(new ByteArrayInputStream(data));
                    text = new Canon().canon(in.readObject());
                } catch (Throwable t) {
                    text = "ERROR " + t;
                }
                System.out.println(name + "\t" + text);
            }
        } else if (args[0].equals("write")) {
            Path dir = Path.of(args[1]);
            for (Map.Entry<String, Object> e : cases().entrySet()) {
                ByteArrayOutputStream bytes = new ByteArrayOutputStream();
                Hessian2Output out = new Hessian2Output(bytes);
                out.writeObject(e.getValue());
                out.close();
                Files.write(dir.resolve(e.getKey() + ".bin"), bytes.toByteArray());
            }
        } else {
            throw new IllegalArgumentException("usage: HessianOracle read FILE... | write DIR");
        }
    }

    static Map<String, Object> cases() {
        Map<String, Object> c = new LinkedHashMap<>();
        int[] ints = {0, -16, 47, -17, 48, -2048, 2047, -2049, 2048, -262144, 262143, -262145,
            262144, Integer.MIN_VALUE, Integer.MAX_VALUE};
        for (int i = 0; i < ints.length; i++) {
            c.put("int_" + i, ints[i]);
        }
        long[] longs = {0L, -8L, 15L, -9L, 16L, -2048L, 2047L, -2049L, 2048L, -262144L, 262143L,
            -262145L, 262144L, Integer.MIN_VALUE, Integer.MAX_VALUE, Integer.MIN_VALUE - 1L,
            Integer.MAX_VALUE + 1L, Long.MIN_VALUE, Long.MAX_VALUE};
        for (int i = 0; i < longs.length; i++) {
            c.put("long_" + i, longs[i]);
        }
        double[] doubles = {0.0, 1.0, -1.0, 127.0, -128.0, 128.0, -129.0, 32767.0, -32768.0,
            32768.0, 12.25, 0.001, -0.5, Math.PI, 1e300, -0.0, 40000.0, 2147483.647,
            Double.POSITIVE_INFINITY, Double.NEGATIVE_INFINITY, Double.MIN_VALUE};
        for (int i = 0; i < doubles.length; i++) {
            c.put("double_" + i, doubles[i]);
        }
        c.put("double_nan", Double.NaN);
        c.put("true", true);
        c.put("false", false);
        c.put("null", null);
        c.put("str_empty", "");
        c.put("str_31", "a".repeat(31));
        c.put("str_32", "b".repeat(32));
        c.put("str_1023", "c".repeat(1023));
        c.put("str_1024", "d".repeat(1024));
        c.put("str_utf8", "h\u00e9llo w\u00f6rld \u2713 \u0000 \u07ff \u0800 \uffff");
        c.put("str_emoji", "a\ud83d\ude00b\ud83c\udf89");
        c.put("str_70000", "z".repeat(70000));
        c.put("str_mixed_70000", "h\u00e9\u2713\ud83d\ude00xyz".repeat(8750));
        c.put("str_pair_at_chunk_end", "x".repeat(32767) + "\ud83d\ude00" + "y".repeat(5));
        c.put("bytes_0", new byte[0]);
        c.put("bytes_15", filled(15));
        c.put("bytes_16", filled(16));
        c.put("bytes_1023", filled(1023));
        c.put("bytes_1024", filled(1024));
        c.put("bytes_70000", filled(70000));
        c.put("date_ms", new Date(1700000000123L));
        c.put("date_min", new Date(1700000040000L));
        c.put("date_neg", new Date(-86400000L * 365));
        c.put("list_mixed", new ArrayList<>(Arrays.asList(1, "a", null, 2.5, true, 7L)));
        c.put("list_long", new ArrayList<>(Arrays.asList(0, 1, 2, 3, 4, 5, 6, 7, 8, 9)));
        c.put("int_array", new int[] {1, 2, 3});
        c.put("long_array", new long[] {1L, 1L << 40});
        c.put("double_array", new double[] {1.5, -2.0});
        c.put("string_array", new String[] {"a", "b"});
        c.put("object_array", new Object[] {1, "x", null});
        c.put("two_int_arrays", new ArrayList<>(Arrays.asList(new int[] {1}, new int[] {2})));
        Map<String, Object> map = new HashMap<>();
        map.put("a", 1);
        map.put("b", new ArrayList<>(Arrays.asList(1, 2)));
        c.put("map_str", map);
        Map<Integer, String> intKeys = new HashMap<>();
        intKeys.put(1, "x");
        intKeys.put(2, "y");
        c.put("map_int_keys", intKeys);
        Map<String, Integer> tree = new TreeMap<>();
        tree.put("k", 1);
        tree.put("j", 2);
        c.put("treemap", tree);
        c.put("pojo_user", user());
        Address addr = new Address("Paris", 75001);
        c.put("list_same_pojo_twice", new ArrayList<>(Arrays.asList(addr, addr)));
        List<Object> shared = new ArrayList<>();
        shared.add(map);
        shared.add(map);
        shared.add(tree);
        shared.add(tree);
        c.put("shared_maps", shared);
        List<Object> self = new ArrayList<>();
        self.add("me");
        self.add(self);
        c.put("self_list", self);
        c.put("enum", Color.GREEN);
        c.put("enum_list", new ArrayList<>(Arrays.asList(Color.RED, Color.GREEN, Color.RED)));
        List<Object> users = new ArrayList<>();
        users.add(user());
        users.add(user());
        c.put("two_users", users);
        return c;
    }

    static User user() {
        User u = new User();
        u.id = 42L;
        u.name = "alice";
        u.tags = new ArrayList<>(Arrays.asList("t1", "t2"));
        u.attrs = new HashMap<>();
        u.attrs.put("score", 7);
        u.addr = new Address("Paris", 75001);
        u.age = 30;
        return u;
    }

    static byte[] filled(int n) {
        byte[] b = new byte[n];
        for (int i = 0; i < n; i++) {
            b[i] = (byte) (i * 7);
        }
        return b;
    }

    /** Prints a decoded value with its Java types; containers seen before print as ^N. */
    static final class Canon {
        private final IdentityHashMap<Object, Integer> seen = new IdentityHashMap<>();

        String canon(Object v) throws Exception {
            if (v == null) {
                return "null";
            }
            if (v instanceof Boolean) {
                return "bool:" + v;
            }
            if (v instanceof Integer) {
                return "int:" + v;
            }
            if (v instanceof Long) {
                return "long:" + v;
            }
            if (v instanceof Double) {
                return String.format("double:%016x", Double.doubleToRawLongBits((Double) v));
            }
            if (v instanceof String) {
                return "str:" + str((String) v);
            }
            if (v instanceof byte[]) {
                return "bytes:" + ((byte[]) v).length + ":" + sha((byte[]) v);
            }
            if (v instanceof Date) {
                return "date:" + ((Date) v).getTime();
            }
            if (v instanceof Enum) {
                return "enum:" + v.getClass().getName() + "." + ((Enum<?>) v).name();
            }
            if (v instanceof Number || v instanceof Character) {
                return v.getClass().getName() + ":" + v;
            }
            Integer before = seen.get(v);
            if (before != null) {
                return "^" + before;
            }
            seen.put(v, seen.size());
            StringBuilder sb = new StringBuilder();
            if (v.getClass().isArray()) {
                sb.append("array:").append(v.getClass().getComponentType().getName()).append('[');
                for (int i = 0; i < Array.getLength(v); i++) {
                    sb.append(i > 0 ? "," : "").append(canon(Array.get(v, i)));
                }
                return sb.append(']').toString();
            }
            if (v instanceof List) {
                sb.append(v.getClass().getName()).append('[');
                int i = 0;
                for (Object item : (List<?>) v) {
                    sb.append(i++ > 0 ? "," : "").append(canon(item));
                }
                return sb.append(']').toString();
            }
            if (v instanceof Map) {
                List<Object[]> entries = new ArrayList<>();
                for (Map.Entry<?, ?> e : ((Map<?, ?>) v).entrySet()) {
                    entries.add(new Object[] {canon(e.getKey()), e.getValue()});
                }
                entries.sort((a, b) -> ((String) a[0]).compareTo((String) b[0]));
                return joinFields(v.getClass().getName(), entries);
            }
            List<Object[]> fields = new ArrayList<>();
            for (Class<?> cl = v.getClass(); cl != null && cl != Object.class; cl = cl.getSuperclass()) {
                for (Field f : cl.getDeclaredFields()) {
                    int mod = f.getModifiers();
                    if (!Modifier.isStatic(mod) && !Modifier.isTransient(mod)) {
                        f.setAccessible(true);
                        fields.add(new Object[] {f.getName(), f.get(v)});
                    }
                }
            }
            fields.sort((a, b) -> ((String) a[0]).compareTo((String) b[0]));
            return joinFields(v.getClass().getName(), fields);
        }

        private String joinFields(String className, List<Object[]> entries) throws Exception {
            StringBuilder sb = new StringBuilder(className).append('{');
            int i = 0;
            for (Object[] e : entries) {
                sb.append(i++ > 0 ? "," : "").append(e[0]).append('=').append(canon(e[1]));
            }
            return sb.append('}').toString();
        }

        private static String str(String s) throws Exception {
            if (s.length() > 100) {
                return "len=" + s.length() + ":sha=" + sha(s.getBytes(StandardCharsets.UTF_16BE));
            }
            StringBuilder sb = new StringBuilder();
            for (char ch : s.toCharArray()) {
                if (ch >= 0x20 && ch < 0x7f && ch != '\\') {
                    sb.append(ch);
                } else {
                    sb.append(String.format("\\u%04x", (int) ch));
                }
            }
            return sb.toString();
        }

        private static String sha(byte[] data) throws Exception {
            StringBuilder sb = new StringBuilder();
            for (byte b : MessageDigest.getInstance("SHA-256").digest(data)) {
                sb.append(String.format("%02x", b));
            }
            return sb.toString();
        }
    }
}
