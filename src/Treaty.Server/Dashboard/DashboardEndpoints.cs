using System.Collections.Frozen;
using System.Globalization;
using System.Reflection;
using System.Security.Cryptography;
using Microsoft.Net.Http.Headers;

namespace Treaty.Server.Dashboard;

/// <summary>
/// The operator dashboard: a page at <c>/</c> and its assets under <c>/dashboard/</c>, embedded in
/// this assembly (no CDN, no build step, works offline). The page reads the same <c>/api/v1</c>
/// endpoints as every client, so it can do nothing the API does not allow its key to do.
/// </summary>
public static class DashboardEndpoints
{
    /// <summary>Everything the page loads comes from this server; nothing inline, no framing.</summary>
    internal const string ContentSecurityPolicy =
        "default-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'; object-src 'none'";

    private const string ResourcePrefix = "Treaty.Dashboard/";

    private static readonly Lazy<FrozenDictionary<string, Asset>> Assets = new(LoadAssets);

    /// <summary>Maps <c>GET /</c> (the page) and <c>GET /dashboard/{file}</c> (its scripts, styles and icon).</summary>
    public static IEndpointRouteBuilder MapTreatyDashboard(this IEndpointRouteBuilder endpoints)
    {
        ArgumentNullException.ThrowIfNull(endpoints);
        // The page and its code hold no data, and must load without a key: it is what asks for one
        // (a 401 from the API shows its sign-in form). So no auth policy may cover this group.
        var dashboard = endpoints.MapGroup("").AllowAnonymous().ExcludeFromDescription();
        dashboard.MapGet("/", (HttpContext context) => Serve(context, "index.html"));
        dashboard.MapGet("/dashboard/settings.json", (HttpContext context, TreatyServerOptions options) =>
        {
            AddSecurityHeaders(context);
            return Results.Json(new DashboardSettings(options.TimelineBodyBytes), DashboardJsonContext.Default.DashboardSettings);
        });
        dashboard.MapGet("/dashboard/{file}", (string file, HttpContext context) => Serve(context, file));
        return endpoints;
    }

    /// <summary>The names of the embedded assets (tests).</summary>
    internal static IEnumerable<string> AssetNames => Assets.Value.Keys;

    private static IResult Serve(HttpContext context, string file)
    {
        // Only the files embedded at build time: the name is a dictionary key, never a path.
        if (!Assets.Value.TryGetValue(file, out var asset) || file == "settings.json")
        {
            return Results.Problem(statusCode: StatusCodes.Status404NotFound);
        }

        AddSecurityHeaders(context);
        // Revalidated on every load (a new server version must never run with an old script), cheap thanks to the ETag.
        context.Response.Headers.CacheControl = "no-cache";
        context.Response.Headers.ETag = asset.ETag;
        if (context.Request.Headers.IfNoneMatch.ToString() == asset.ETag)
        {
            return Results.StatusCode(StatusCodes.Status304NotModified);
        }

        return Results.Bytes(asset.Content, asset.ContentType);
    }

    private static void AddSecurityHeaders(HttpContext context)
    {
        var headers = context.Response.Headers;
        headers[HeaderNames.ContentSecurityPolicy] = ContentSecurityPolicy;
        headers[HeaderNames.XContentTypeOptions] = "nosniff";
        headers[HeaderNames.XFrameOptions] = "DENY";
        headers["Referrer-Policy"] = "no-referrer";
    }

    private static FrozenDictionary<string, Asset> LoadAssets()
    {
        var assembly = typeof(DashboardEndpoints).Assembly;
        var assets = new Dictionary<string, Asset>(StringComparer.Ordinal);
        foreach (var name in assembly.GetManifestResourceNames().Where(n => n.StartsWith(ResourcePrefix, StringComparison.Ordinal)))
        {
            using var stream = assembly.GetManifestResourceStream(name)!;
            using var buffer = new MemoryStream();
            stream.CopyTo(buffer);
            var content = buffer.ToArray();
            var file = name[ResourcePrefix.Length..];
            var etag = "\"" + Convert.ToHexStringLower(SHA256.HashData(content).AsSpan(0, 8)) + "\"";
            assets[file] = new Asset(content, ContentTypeOf(file), etag);
        }

        return assets.ToFrozenDictionary(StringComparer.Ordinal);
    }

    private static string ContentTypeOf(string file) => Path.GetExtension(file).ToLower(CultureInfo.InvariantCulture) switch
    {
        ".html" => "text/html; charset=utf-8",
        ".js" => "text/javascript; charset=utf-8",
        ".css" => "text/css; charset=utf-8",
        ".svg" => "image/svg+xml",
        _ => "application/octet-stream",
    };

    private sealed record Asset(byte[] Content, string ContentType, string ETag);
}

/// <summary>What the page needs to know about the server.</summary>
/// <param name="TimelineBodyBytes">How much of a body the timeline keeps (the page clips the request it shows the same way).</param>
internal sealed record DashboardSettings(int TimelineBodyBytes);

[System.Text.Json.Serialization.JsonSourceGenerationOptions(System.Text.Json.JsonSerializerDefaults.Web)]
[System.Text.Json.Serialization.JsonSerializable(typeof(DashboardSettings))]
internal sealed partial class DashboardJsonContext : System.Text.Json.Serialization.JsonSerializerContext;
