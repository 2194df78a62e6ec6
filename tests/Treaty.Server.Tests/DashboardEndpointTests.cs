using System.Net;
using System.Text.RegularExpressions;
using Microsoft.AspNetCore.Routing;
using Microsoft.Extensions.DependencyInjection;
using Treaty.Server.Dashboard;
using Treaty.Server.Tests.Support;

namespace Treaty.Server.Tests;

/// <summary>The dashboard's page and assets as HTTP resources: embedded, self-contained, locked down.
/// What the page does in a browser is tested in Treaty.Dashboard.Tests.</summary>
public sealed partial class DashboardEndpointTests(ServerFixture fixture) : IClassFixture<ServerFixture>
{
    private readonly HttpClient _http = fixture.Http;

    [Fact]
    public async Task Root_ServesThePageWithAStrictContentSecurityPolicy()
    {
        using var response = await _http.GetAsync("/");

        response.StatusCode.ShouldBe(HttpStatusCode.OK);
        response.Content.Headers.ContentType!.MediaType.ShouldBe("text/html");
        response.Headers.GetValues("Content-Security-Policy").Single().ShouldStartWith("default-src 'self';");
        response.Headers.GetValues("X-Content-Type-Options").Single().ShouldBe("nosniff");
        response.Headers.GetValues("X-Frame-Options").Single().ShouldBe("DENY");
        (await response.Content.ReadAsStringAsync()).ShouldContain("<script type=\"module\" src=\"/dashboard/app.js\">");
    }

    [Theory]
    [InlineData("app.js", "text/javascript")]
    [InlineData("api.js", "text/javascript")]
    [InlineData("graph.js", "text/javascript")]
    [InlineData("style.css", "text/css")]
    [InlineData("favicon.svg", "image/svg+xml")]
    public async Task Assets_AreServedFromTheAssemblyWithTheirTypes(string file, string mediaType)
    {
        using var response = await _http.GetAsync($"/dashboard/{file}");

        response.StatusCode.ShouldBe(HttpStatusCode.OK);
        response.Content.Headers.ContentType!.MediaType.ShouldBe(mediaType);
        response.Headers.ETag.ShouldNotBeNull();
        DashboardEndpoints.AssetNames.ShouldContain(file);
    }

    [Fact]
    public async Task Assets_UnchangedSinceTheETag_Answer304()
    {
        using var first = await _http.GetAsync("/dashboard/app.js");
        using var request = new HttpRequestMessage(HttpMethod.Get, "/dashboard/app.js");
        request.Headers.IfNoneMatch.Add(first.Headers.ETag!);

        using var second = await _http.SendAsync(request);

        second.StatusCode.ShouldBe(HttpStatusCode.NotModified);
    }

    [Theory]
    [InlineData("/dashboard/nope.js")]
    [InlineData("/dashboard/..%2Fappsettings.json")]
    [InlineData("/dashboard/Treaty.Server.dll")]
    public async Task Assets_AnythingElse_Is404(string path)
    {
        using var response = await _http.GetAsync(path);

        response.StatusCode.ShouldBe(HttpStatusCode.NotFound);
    }

    [Fact]
    public async Task Page_LoadsNothingFromAnotherOriginAndHasNoInlineCode()
    {
        foreach (var file in DashboardEndpoints.AssetNames.Where(f => f.EndsWith(".html", StringComparison.Ordinal) || f.EndsWith(".js", StringComparison.Ordinal) || f.EndsWith(".css", StringComparison.Ordinal)))
        {
            var text = await _http.GetStringAsync($"/dashboard/{file}");
            // No absolute URL to fetch from (the SVG namespace is a name, not a request).
            AbsoluteUrl().Matches(text).Select(m => m.Value).Where(u => u != "http://www.w3.org/2000/svg").ShouldBeEmpty(file);
            text.ShouldNotContain("style=\"", customMessage: file);
            text.ShouldNotContain("onclick=\"", customMessage: file);
            text.ShouldNotContain("innerHTML", customMessage: file);
        }

        var page = await _http.GetStringAsync("/");
        InlineScript().IsMatch(page).ShouldBeFalse("every script is a file of its own, so 'self' is the whole policy");
    }

    [Fact]
    public void PageAndAssets_AreAnonymous_SoThePageCanAskForTheKey()
    {
        var endpoints = fixture.Coordinator.Services.GetRequiredService<EndpointDataSource>().Endpoints.OfType<RouteEndpoint>()
            .Where(e => e.RoutePattern.RawText is "/" || e.RoutePattern.RawText!.StartsWith("/dashboard/", StringComparison.Ordinal))
            .ToList();

        endpoints.Select(e => e.RoutePattern.RawText).ShouldBe(["/", "/dashboard/settings.json", "/dashboard/{file}"], ignoreOrder: true);
        endpoints.ShouldAllBe(e => e.Metadata.GetMetadata<Microsoft.AspNetCore.Authorization.IAllowAnonymous>() != null);
    }

    [Fact]
    public async Task Settings_TellThePageTheTimelineBodySize()
    {
        var text = await _http.GetStringAsync("/dashboard/settings.json");

        text.ShouldBe($"{{\"timelineBodyBytes\":{TreatyServerDefaults.TimelineBodyBytes}}}");
    }

    [GeneratedRegex("https?://[^\\s'\"`)]+")]
    private static partial Regex AbsoluteUrl();

    [GeneratedRegex("<script(?![^>]*\\bsrc=)[^>]*>")]
    private static partial Regex InlineScript();
}
