using Treaty.Cli.Tests.Support;
using Treaty.Testing;

namespace Treaty.Cli.Tests;

/// <summary>
/// <c>treaty serve --store sqlite|postgres --connection-string CS --instance-id NAME --lease D</c>:
/// a bad value exits 2 naming the flag, and the connection string's password is never printed.
/// </summary>
public sealed class ServeStoreFlagTests
{
    private const string Password = "hunter2-secret";

    [Theory]
    [InlineData(new[] { "--store", "mysql" }, "--store 'mysql' must be sqlite or postgres")]
    [InlineData(new[] { "--store", "postgres" }, "--store postgres needs --connection-string")]
    [InlineData(new[] { "--store", "postgres", "--connection-string", "Host=127.0.0.1;Password=" + Password + ";No Such Keyword=1" }, "--connection-string is not a valid PostgreSQL connection string")]
    [InlineData(new[] { "--connection-string", "Host=127.0.0.1;Password=" + Password }, "--connection-string is only for --store postgres")]
    [InlineData(new[] { "--lease", "15x" }, "--lease '15x' is not a duration")]
    [InlineData(new[] { "--lease", "500ms" }, "--lease '500ms' is not a duration between 1s and 1h")]
    [InlineData(new[] { "--lease", "2h" }, "--lease '2h' is not a duration between 1s and 1h")]
    [InlineData(new[] { "--instance-id", " " }, "--instance-id must be non-blank")]
    public async Task Serve_BadStoreFlag_ExitsTwoNamingTheFlag_WithoutThePassword(string[] flags, string expected)
    {
        using var dir = new TempDir("treaty-serve-flags");

        var result = await CliRun.ProcessAsync(
            ["serve", "--urls", "http://127.0.0.1:0", "--data-dir", dir.Path, .. flags],
            environment: new Dictionary<string, string?> { ["TREATY_CONNECTION_STRING"] = null });

        result.ExitCode.ShouldBe(2, result.ToString());
        result.Error.ShouldContain(expected, Case.Sensitive, result.ToString());
        (result.Out + result.Error).ShouldNotContain(Password);
    }

    [Fact]
    public async Task Serve_Postgres_ServesFromTheDatabase_AndPrintsHostPortDatabaseButNeverThePassword()
    {
        await using var postgres = await PostgresServer.StartAsync();
        // Trust authentication ignores the password, so one can be given and must stay unprinted.
        var connectionString = await postgres.CreateDatabaseAsync("cli") + ";Password=" + Password;
        using var dir = new TempDir("treaty-serve-pg");
        var port = ChildProcess.FreePort();

        var output = await WorkingDirectoryTests.RunUntilHealthyAsync(
            dir.Path,
            [CliRun.Dll, "serve", "--urls", $"http://127.0.0.1:{port}", "--store", "postgres", "--instance-id", "cli-a", "--lease", "5s"],
            $"http://127.0.0.1:{port}/readyz",
            new Dictionary<string, string> { ["TREATY_CONNECTION_STRING"] = connectionString });

        output.ShouldContain($"store postgres on 127.0.0.1:{postgres.Port}/cli_", Case.Sensitive, output);
        output.ShouldContain("instance cli-a, lease 5s", Case.Sensitive, output);
        output.ShouldNotContain(Password);
        File.Exists(Path.Combine(dir.Path, "data", "treaty.db")).ShouldBeFalse("the SQLite store was opened");
    }
}
