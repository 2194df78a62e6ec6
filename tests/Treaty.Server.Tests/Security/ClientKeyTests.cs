using System.CommandLine;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Logging;
using Treaty.AspNetCore.InDoubt;
using Treaty.Cli;
using Treaty.Client;

namespace Treaty.Server.Tests.Security;

/// <summary>Every client of the coordinator can send a key: the SDK, its DI registration, the
/// in-doubt resolver, the Shop, and <c>treaty serve</c> reads its keys from flags and environment.</summary>
public sealed class ClientKeyTests
{
    [Fact]
    public async Task Sdk_WithAKey_IsServed_WithoutOne_Gets401()
    {
        await using var server = await SecureServer.StartAsync(SecureServer.WithKeys);

        using var keyed = new TreatyClient(server.BaseAddress, SecureServer.ClientSecret);
        (await keyed.ListAsync(new TransactionListQuery())).Items.ShouldBeEmpty();

        using var anonymous = new TreatyClient(server.BaseAddress, apiKey: null);
        (await Should.ThrowAsync<TreatyApiException>(() => anonymous.ListAsync(new TransactionListQuery()))).StatusCode.ShouldBe(401);

        using var provider = new ServiceCollection().AddTreatyClient(server.BaseAddress, SecureServer.OperatorSecret).BuildServiceProvider();
        var fromDi = provider.GetRequiredService<TreatyClient>();
        (await Should.ThrowAsync<TreatyApiException>(() => fromDi.RetryAsync("nothing-here"))).StatusCode.ShouldBe(404); // authorized: an operator
    }

    [Fact]
    public void InDoubtResolver_SendsItsApiKey()
    {
        var services = new ServiceCollection().AddLogging();
        services.AddTreatyInDoubtResolver(o =>
        {
            o.Coordinator = new Uri("http://127.0.0.1:5080/");
            o.ApiKey = SecureServer.ClientSecret;
        });
        using var provider = services.BuildServiceProvider();

        using var http = provider.GetRequiredService<IHttpClientFactory>().CreateClient(InDoubtResolverDefaults.HttpClientName);

        http.DefaultRequestHeaders.Authorization.ShouldNotBeNull().ToString().ShouldBe("Bearer " + SecureServer.ClientSecret);
    }

    [Fact]
    public void Shop_ReadsItsCoordinatorKey_FromTheFlag()
    {
        var options = Shop.ShopOptions.Parse(
            ["--service", "order", "--urls", "http://127.0.0.1:0", "--data-dir", "./d", "--coordinator", "http://127.0.0.1:5080",
             "--payment", "http://127.0.0.1:1", "--inventory", "http://127.0.0.1:2", "--coordinator-key", SecureServer.ClientSecret], null);

        options.CoordinatorKey.ShouldBe(SecureServer.ClientSecret);
    }

    [Fact]
    public void Serve_KeysFromFlagsAndEnvironment_PrefixesAndLimits()
    {
        var flags = new ServeSecurityFlags();
        var command = new RootCommand();
        foreach (var option in flags.All)
        {
            command.Options.Add(option);
        }

        var parse = command.Parse([
            "--api-key", "app:" + SecureServer.ClientSecret, "--api-key", "app2:" + SecureServer.ClientSecret + "x",
            "--operator-key", SecureServer.OperatorSecret, "--allow-participant", "http://10.0.0.5:8080/pay",
            "--rate-limit", "20", "--max-stored-body", "4096"]);
        parse.Errors.ShouldBeEmpty();
        var options = new TreatyServerOptions();

        flags.Apply(parse, options, "env1:" + SecureServer.ClientSecret + "1, env2:" + SecureServer.ClientSecret + "2", "ops:" + SecureServer.NewOperatorSecret);

        options.ApiKeys.Count.ShouldBe(4);
        options.OperatorKeys.ShouldBe([SecureServer.OperatorSecret, "ops:" + SecureServer.NewOperatorSecret]);
        options.AllowedParticipants.ShouldBe(["http://10.0.0.5:8080/pay"]);
        options.RateLimitPerSecond.ShouldBe(20);
        options.MaxBranchResultBytes.ShouldBe(4096);
        options.Validate();
    }

    [Fact]
    public void Serve_DeadLetterSources_FromFlagsAndEnvironment()
    {
        var flags = new ServeSecurityFlags();
        var command = new RootCommand();
        foreach (var option in flags.All)
        {
            command.Options.Add(option);
        }

        var parse = command.Parse(["--dead-letter-source", "payment=http://127.0.0.1:5002", "--dead-letter-source", "order=http://127.0.0.1:5001"]);
        parse.Errors.ShouldBeEmpty();
        var options = new TreatyServerOptions();

        flags.Apply(parse, options, null, null, "inventory=http://127.0.0.1:5003, shipping=http://127.0.0.1:5004");

        options.DeadLetterSources.ShouldBe(["payment=http://127.0.0.1:5002", "order=http://127.0.0.1:5001", "inventory=http://127.0.0.1:5003", "shipping=http://127.0.0.1:5004"]);
    }
}
