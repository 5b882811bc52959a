import Foundation

#if canImport(FoundationNetworking)
import FoundationNetworking
#endif

/// Plain HTTP GETs against a service's operations endpoint on loopback, and a free loopback port to give it.
public enum HTTPProbe {
    /// The status and body of `GET http://127.0.0.1:PORT/PATH`.
    public static func get(port: Int, _ path: String) async throws -> (status: Int, body: String) {
        let (status, body, _) = try await request(port: port, path)
        return (status, body)
    }

    /// The status, body and final URL (after redirects) of a request to `http://127.0.0.1:PORT/PATH`: a GET, or
    /// with `form`, a POST of it as `application/x-www-form-urlencoded`.
    public static func request(
        port: Int,
        _ path: String,
        form: [String: String]? = nil,
        headers: [String: String] = [:]
    ) async throws -> (status: Int, body: String, url: String) {
        var request = URLRequest(url: URL(string: "http://127.0.0.1:\(port)/\(path)")!)
        for (name, value) in headers { request.setValue(value, forHTTPHeaderField: name) }
        if let form {
            var allowed = CharacterSet.alphanumerics
            allowed.insert(charactersIn: "-._~")
            request.httpMethod = "POST"
            request.setValue("application/x-www-form-urlencoded", forHTTPHeaderField: "Content-Type")
            request.httpBody = Data(
                form.map { "\($0.key)=\($0.value.addingPercentEncoding(withAllowedCharacters: allowed)!)" }
                    .joined(separator: "&").utf8
            )
        }
        let (data, response) = try await URLSession.shared.data(for: request)
        let http = response as? HTTPURLResponse
        return (http?.statusCode ?? 0, String(decoding: data, as: UTF8.self), http?.url?.absoluteString ?? "")
    }

    /// The samples of a Prometheus text exposition: each line `name{labels} value` as (name with labels, value).
    public static func samples(_ exposition: String) -> [String: Double] {
        var samples: [String: Double] = [:]
        for line in exposition.split(separator: "\n") where !line.hasPrefix("#") {
            guard let space = line.lastIndex(of: " "), let value = Double(line[line.index(after: space)...]) else {
                continue
            }
            samples[String(line[..<space])] = value
        }
        return samples
    }

    /// A loopback port nothing listens on at this moment (the system's pick, released at once).
    public static func freePort() throws -> Int {
        let descriptor = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        guard descriptor >= 0 else { throw TestSupportError("socket() failed") }
        defer { close(descriptor) }
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        address.sin_port = 0
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        let bound = withUnsafeMutablePointer(to: &address) { pointer in
            pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                bind(descriptor, $0, length) == 0 && getsockname(descriptor, $0, &length) == 0
            }
        }
        guard bound else { throw TestSupportError("no free loopback port") }
        return Int(UInt16(bigEndian: address.sin_port))
    }
}
