using System.Text.Json.Nodes;

namespace Treaty.Cli.Tests;

/// <summary>
/// <c>--seed-scale N</c>: the Shop seeds N times the balances and stock (for a load generator such as
/// bench/Treaty.Bench.Shop), and keeps the per-checkout limits.
/// </summary>
public sealed class ShopSeedScaleTests
{
    private static readonly string[] Base = ["--service", "payment", "--urls", "http://127.0.0.1:5002", "--data-dir", "d"];

    [Fact]
    public void Default_IsOne_AndAWholeNumberIsParsed()
    {
        Shop.ShopOptions.Parse(Base, null).SeedScale.ShouldBe(1);
        Shop.ShopOptions.Parse([.. Base, "--seed-scale", "1000"], null).SeedScale.ShouldBe(1000);
    }

    [Theory]
    [InlineData("0")]
    [InlineData("-3")]
    [InlineData("1.5")]
    [InlineData("1000001")]
    [InlineData("many")]
    public void OutOfRange_Throws_NamingTheFlag(string value)
    {
        var e = Should.Throw<ArgumentException>(() => Shop.ShopOptions.Parse([.. Base, "--seed-scale", value], null));
        e.Message.ShouldContain("--seed-scale must be a whole number from 1 to 1000000");
        e.Message.ShouldContain($"'{value}'");
    }

    [Fact]
    public async Task Scaled_TheServicesSeedNTimesTheBalancesAndStock_LimitsUnchanged()
    {
        var root = Path.Combine(Path.GetTempPath(), "treaty-seed-" + Guid.NewGuid().ToString("N")[..8]);
        using var http = new HttpClient { Timeout = TimeSpan.FromSeconds(30) };
        var shop = Path.Combine(AppContext.BaseDirectory, "Shop.dll");
        var paymentUrl = $"http://127.0.0.1:{ChildProcess.FreePort()}";
        var inventoryUrl = $"http://127.0.0.1:{ChildProcess.FreePort()}";
        var payment = ChildProcess.StartDotnet("payment", shop, ["--service", "payment", "--urls", paymentUrl, "--data-dir", Path.Combine(root, "payment"), "--seed-scale", "7"]);
        ChildProcess? inventory = null;
        try
        {
            inventory = ChildProcess.StartDotnet("inventory", shop, ["--service", "inventory", "--urls", inventoryUrl, "--data-dir", Path.Combine(root, "inventory"), "--seed-scale", "7"]);
            await payment.WaitHealthyAsync(http, paymentUrl + "/healthz", TimeSpan.FromSeconds(60), CancellationToken.None);
            await inventory.WaitHealthyAsync(http, inventoryUrl + "/healthz", TimeSpan.FromSeconds(60), CancellationToken.None);

            var alice = JsonNode.Parse(await http.GetStringAsync(paymentUrl + "/wallets/alice"))!;
            alice["balance"]!.GetValue<decimal>().ShouldBe(2000.00m * 7);
            alice["limit"]!.GetValue<decimal>().ShouldBe(1000.00m);
            var book = JsonNode.Parse(await http.GetStringAsync(inventoryUrl + "/stock/book"))!;
            book["available"]!.GetValue<int>().ShouldBe(100 * 7);
        }
        finally
        {
            payment.Dispose(); // SIGKILL by pid
            inventory?.Dispose();
            try
            {
                Directory.Delete(root, recursive: true);
            }
            catch (IOException)
            {
                // a service still closing its file: the temp directory is cleaned by the OS
            }
        }
    }
}
