using System.Net;
using Microsoft.AspNetCore.Http;
using Microsoft.Extensions.Logging.Abstractions;
using Treaty.Core.Engine;
using Treaty.Core.Model;
using Treaty.Server.Security;

namespace Treaty.Server.Tests.Security;

/// <summary>Runs alone: it changes the process-wide <see cref="HttpClient.DefaultProxy"/>.</summary>
[CollectionDefinition(nameof(ProxyTests), DisableParallelization = true)]
public sealed class ProxyTestsCollection;

/// <summary>The branch invoker ignores a configured proxy: a proxy would connect on the
/// coordinator's behalf, past the allowlist's address check.</summary>
[Collection(nameof(ProxyTests))]
public sealed class ProxyTests
{
    [Fact]
    public async Task Invoker_IgnoresTheDefaultProxy()
    {
        await using var proxy = await LocalServer.StartAsync(_ => Results.StatusCode(502));
        await using var participant = await LocalServer.StartAsync(_ => Results.Ok());
        var previous = HttpClient.DefaultProxy;
        HttpClient.DefaultProxy = new WebProxy(proxy.Base) { BypassProxyOnLocal = false };
        try
        {
            using var invoker = new HttpBranchInvoker(new TreatyServerOptions(), TimeProvider.System, NullLogger<HttpBranchInvoker>.Instance, new ParticipantAllowlist([]));

            var outcome = await invoker.InvokeAsync(new BranchCall("g1", "s", "action", $"{participant.Base}/direct", 1, "{}", TimeSpan.FromSeconds(5)), CancellationToken.None);

            outcome.Kind.ShouldBe(OutcomeKind.Succeeded);
            participant.Calls.ShouldBe(["/direct"]);
            proxy.Calls.ShouldBeEmpty();
        }
        finally
        {
            HttpClient.DefaultProxy = previous;
        }
    }
}
